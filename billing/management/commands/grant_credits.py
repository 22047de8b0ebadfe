"""`manage.py grant_credits --org <slug> --credits N [--reason ...] [--key ...]` for operators."""

from __future__ import annotations

import uuid
from decimal import Decimal, InvalidOperation

from django.core.management.base import BaseCommand, CommandError

from billing.ledger import credit_grant
from tenants.models import Organization


class Command(BaseCommand):
    help = "Grant credits to an organization (an append-only ledger entry)."

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="organization slug")
        parser.add_argument("--credits", required=True, help="positive amount, e.g. 500 or 12.5")
        parser.add_argument("--reason", default="Granted by an operator")
        parser.add_argument("--key", help="idempotency key: the same key never grants twice (default: random)")

    def handle(self, *args, org: str, credits: str, reason: str, key: str | None, **options):
        organization = Organization.objects.filter(slug=org).first()
        if organization is None:
            raise CommandError(f"No organization with slug {org!r}.")
        try:
            amount = Decimal(credits)
        except InvalidOperation as exc:
            raise CommandError(f"--credits must be a number, not {credits!r}.") from exc
        if amount <= 0:
            raise CommandError("--credits must be positive.")
        movement = credit_grant(organization=organization, amount=amount,
                                key=key or f"operator:{uuid.uuid4()}", description=reason)
        verb = "Granted" if movement.created else "Already granted (same key)"
        self.stdout.write(f"{verb} {movement.entry.amount} credits to {organization.slug}; "
                          f"balance {movement.entry.balance_after}.")
