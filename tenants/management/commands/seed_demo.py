"""Idempotent demo data for development: a verified owner and the `demo` organization."""

from __future__ import annotations

from allauth.account.models import EmailAddress
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts.models import User
from billing.services import credits_grant_monthly
from tenants.audit.services import Actor
from tenants.models import Organization
from tenants.services import organization_create

DEMO_EMAIL = "demo@example.com"
DEMO_PASSWORD = "prumo-demo"
DEMO_SLUG = "demo"


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
            credits_grant_monthly(organization)  # once per month, whatever the number of runs
        self.stdout.write(self.style.SUCCESS(
            f"Demo ready: sign in at {settings.SITE_URL}/accounts/login/ as {DEMO_EMAIL} / {DEMO_PASSWORD}, "
            f"organization at {settings.SITE_URL}/o/{organization.slug}/"
        ))
