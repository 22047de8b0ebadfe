"""`manage.py audit_verify --org <slug>` (or `--all`): is each organization's audit chain intact?"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from tenants.audit.integrity import audit_chain_verify
from tenants.models import Organization


class Command(BaseCommand):
    help = (
        "Recompute the hash chain of organizations' audit events. Prints OK and the count per organization, "
        "or the first broken link (event id, time, why); exits 1 when any chain is broken."
    )

    def add_arguments(self, parser):
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--org", action="append", dest="slugs", metavar="SLUG",
                           help="An organization's slug (repeatable).")
        which.add_argument("--all", action="store_true", help="Every organization.")

    def handle(self, *args, slugs: list[str] | None = None, all: bool = False, **options):
        organizations = Organization.objects.exclude(schema_name="public").order_by("slug")
        if slugs:
            organizations = organizations.filter(slug__in=slugs)
            unknown = sorted(set(slugs) - {org.slug for org in organizations})
            if unknown:
                raise CommandError(f"no organization with slug {', '.join(unknown)}")
        broken = []
        for organization in organizations:
            status = audit_chain_verify(organization=organization)
            if status.intact:
                self.stdout.write(self.style.SUCCESS(f"{organization.slug}: OK, {status.events} events"))
            else:
                broken.append(organization.slug)
                self.stdout.write(self.style.ERROR(
                    f"{organization.slug}: BROKEN at {status.broken} ({status.events} events)"))
        if broken:
            raise CommandError(f"audit chain broken in {len(broken)} organization(s): {', '.join(broken)}",
                               returncode=1)
