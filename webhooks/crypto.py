"""Endpoints' signing secrets at rest: Fernet under WEBHOOK_SECRET_ENCRYPTION_KEYS (core.fernet)."""

from __future__ import annotations

from cryptography.fernet import MultiFernet
from django.conf import settings

from core.fernet import fernet_for


def _fernet() -> MultiFernet:
    return fernet_for("webhook-secrets", settings.WEBHOOK_SECRET_ENCRYPTION_KEYS)


def secret_encrypt(secret: str) -> str:
    return _fernet().encrypt(secret.encode()).decode()


def secret_decrypt(token: str) -> str:
    return _fernet().decrypt(token.encode()).decode()
