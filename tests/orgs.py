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
