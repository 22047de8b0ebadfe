"""Helpers for tests that commit their own organizations (servers and other connections must see them)."""

from __future__ import annotations

from django.db import connection


def organization_drop(org) -> None:
    """Delete a committed organization and its schema. Its ledger goes first: an entry protects the
    reservation it settled, so the organization's cascade cannot remove them in one go."""
    from billing.models import CreditEntry, CreditReservation

    CreditEntry.objects.filter(organization_id=org.pk).delete()
    CreditReservation.objects.filter(organization_id=org.pk).delete()
    schema = org.schema_name
    org.delete()
    with connection.cursor() as cursor:
        cursor.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def audit_events_remove(schema_name: str, **filters) -> int:
    """Delete audit events a test committed (filtered like `AuditEvent.objects.filter`). The database refuses
    it outside the retention purge (tenants/audit migration 0002): this sets the purge's transaction-local
    setting, as `audit_purge` does. Remove only the newest events, or the schema's chain stops verifying."""
    from django.db import transaction
    from django_tenants.utils import schema_context

    from tenants.audit.models import AuditEvent
    from tenants.audit.services import PURGE_SETTING

    with transaction.atomic(), schema_context(schema_name):
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config(%s, 'on', true)", [PURGE_SETTING])
        deleted, _per_model = AuditEvent.objects.filter(**filters).delete()
    return deleted


def checks_months(org) -> list[tuple]:
    """The organization's monthly checks counts (checks.models.ChecksMonth): a test that commits checks saves them
    first and puts them back with `checks_months_restore` (deleting its checks gives no place back)."""
    from django_tenants.utils import schema_context

    from checks.models import ChecksMonth

    with schema_context(org.schema_name):
        return list(ChecksMonth.objects.values_list("month", "requested", "quota"))


def checks_months_restore(org, saved: list[tuple]) -> None:
    from django_tenants.utils import schema_context

    from checks.models import ChecksMonth

    with schema_context(org.schema_name):
        ChecksMonth.objects.all().delete()
        ChecksMonth.objects.bulk_create([ChecksMonth(month=month, requested=requested, quota=quota)
                                         for month, requested, quota in saved])
