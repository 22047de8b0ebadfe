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
