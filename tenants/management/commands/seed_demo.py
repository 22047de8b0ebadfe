"""Idempotent demo data for development: a verified owner and the `demo` organization."""

from __future__ import annotations

from allauth.account.models import EmailAddress
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils.translation import gettext_noop

from accounts.models import User
from billing.models import Plan
from billing.selectors import billing_account_get
from billing.services import FREE_PLAN, credits_grant_monthly
from billing.stripe import plan_assign
from tenants.audit.services import Actor
from tenants.models import Organization
from tenants.services import organization_create

DEMO_EMAIL = "demo@example.com"
DEMO_PASSWORD = "prumo-demo"
DEMO_SLUG = "demo"
# The demo shows everything a paying team gets (the API included); the billing page says it is a demo.
DEMO_PLAN = "pro"
DEMO_PLAN_NOTE = gettext_noop("Development demo")


class Command(BaseCommand):
    help = "Create the demo owner (demo@example.com / prumo-demo) and organization `demo`. Development only."

    def handle(self, *args, **options):
        if not settings.DEMO_SEED_ALLOWED:
            raise CommandError("seed_demo refuses to run outside development and test settings.")
        with transaction.atomic():
            user, created = User.objects.get_or_create(email=DEMO_EMAIL, defaults={"name": "Demo Owner"})
            if created:
                user.set_password(DEMO_PASSWORD)
                user.save(update_fields=["password"])
            EmailAddress.objects.update_or_create(
                user=user, email=DEMO_EMAIL, defaults={"verified": True, "primary": True}
            )
            organization = Organization.objects.filter(slug=DEMO_SLUG).first()
            if organization is None:
                organization = organization_create(
                    user=user, name="Demo Organization", slug=DEMO_SLUG, actor=Actor.system("seed_demo")
                )
            account = billing_account_get(organization=organization)
            if account.plan.code == FREE_PLAN and not account.plan_note:  # never undo an operator's set_plan
                account = plan_assign(organization=organization, plan=Plan.objects.get(code=DEMO_PLAN),
                                      actor=Actor.system("seed_demo"), note=DEMO_PLAN_NOTE)
            credits_grant_monthly(organization)  # once per month, whatever the number of runs
        self.stdout.write(self.style.SUCCESS(
            f"Demo ready: sign in at {settings.SITE_URL}/accounts/login/ as {DEMO_EMAIL} / {DEMO_PASSWORD}, "
            f"organization at {settings.SITE_URL}/o/{organization.slug}/ on the {account.plan.name} plan"
        ))
