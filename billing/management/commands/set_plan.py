"""`manage.py set_plan --org <slug> --plan <code> [--note ...]` for operators (audited)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from billing.models import Plan
from billing.stripe import OPERATOR_NOTE, PlanDecidedByStripe, plan_assign
from tenants.audit.services import Actor
from tenants.models import Organization


class Command(BaseCommand):
    help = "Put an organization on a plan without a subscription (audited; an upgrade gets its credits now)."

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="organization slug")
        parser.add_argument("--plan", required=True, help="plan code, e.g. free, starter, pro, business")
        parser.add_argument("--note", default=OPERATOR_NOTE,
                            help="why, shown on the organization's billing page")

    def handle(self, *args, org: str, plan: str, note: str, **options):
        organization = Organization.objects.filter(slug=org).first()
        if organization is None:
            raise CommandError(f"No organization with slug {org!r}.")
        chosen = Plan.objects.filter(code=plan).first()
        if chosen is None:
            codes = ", ".join(Plan.objects.values_list("code", flat=True))
            raise CommandError(f"No plan {plan!r}. Plans: {codes}.")
        try:
            account = plan_assign(organization=organization, plan=chosen, actor=Actor.system("set_plan"),
                                  note=note[:100])
        except PlanDecidedByStripe as exc:
            raise CommandError(f"{org} has a live Stripe subscription: change its plan in Stripe or on its "
                               "billing page.") from exc
        account.refresh_from_db()
        self.stdout.write(f"{organization.slug} is on {account.plan.name} ({account.plan_note}); "
                          f"balance {account.credits} credits.")
