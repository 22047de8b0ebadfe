"""`manage.py schema_drift`: tenant schemas whose structure differs from a fresh one's."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from tenants.migration_status import drift_report

from .pending_migrations import schemas_sentence


class Command(BaseCommand):
    help = (
        "Compare every organization's schema (columns, constraints, indexes) with a "
        "reference schema provisioned in a rolled-back transaction. Exits 1 when any differs."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser):
        parser.add_argument("--quiet", action="store_true", help="Print only the error line on drift.")

    def handle(self, *args, quiet: bool = False, **options):
        report = drift_report()
        if not report.drifted:
            if not quiet:
                self.stdout.write(self.style.SUCCESS(f"no drift in {report.checked} tenant schemas"))
            return
        if not quiet:
            for schema, lines in report.drifted.items():
                self.stdout.write(f"{schema}:")
                for line in lines:
                    self.stdout.write(f"  {line}")
        drifted = list(report.drifted)
        raise CommandError(
            f"{len(drifted)} of {report.checked} tenant schemas have drifted: {schemas_sentence(drifted)}",
            returncode=1,
        )
