"""allauth's reauthenticate flow for a test client (minting API keys needs a recent one)."""

from __future__ import annotations

from django.test import Client

from conftest import PASSWORD


def reauthenticate(client: Client, password: str = PASSWORD) -> None:
    """Confirm the signed-in user's password on allauth's page, as a person would."""
    response = client.post("/accounts/reauthenticate/", {"password": password})
    assert response.status_code == 302, response.content.decode()[:2000]
