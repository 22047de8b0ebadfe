"""`manage.py billing_webhook_retry [--id N ...]`: process stored Stripe webhooks whose handling failed."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from billing.webhooks import webhook_failed_list, webhook_trigger_retry


class Command(BaseCommand):
    help = "Retry verified Stripe webhook deliveries that failed (all of them, or the given trigger ids)."

    def add_arguments(self, parser):
        parser.add_argument("--id", type=int, action="append", dest="ids", help="WebhookEventTrigger id (repeatable)")

    def handle(self, *args, ids: list[int] | None, **options):
        triggers = webhook_failed_list()
        if ids:
            triggers = triggers.filter(id__in=ids)
        done = failed = 0
        for trigger in triggers:
            if webhook_trigger_retry(trigger=trigger):
                done += 1
                self.stdout.write(f"trigger {trigger.id}: processed ({trigger.event_id})")
            else:
                failed += 1
                self.stdout.write(f"trigger {trigger.id}: failed again: {trigger.exception}")
        self.stdout.write(f"{done} processed, {failed} still failing.")
        if failed:
            raise CommandError(f"{failed} webhook deliveries still fail; see their tracebacks in the admin.")
