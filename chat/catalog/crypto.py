"""Provider keys at rest: MultiFernet over a rotating key set.

`PROVIDER_KEY_ENCRYPTION_KEYS` lists Fernet keys, newest first: new values are encrypted
with the first, any listed key decrypts. To rotate, put a new key first, run
`manage.py rotate_provider_keys`, then drop the old key.
"""

from __future__ import annotations

from cryptography.fernet import InvalidToken, MultiFernet
from django.conf import settings

from core.fernet import fernet_for

__all__ = ["InvalidToken", "key_decrypt", "key_encrypt", "key_rotate"]


def _current() -> MultiFernet:
    return fernet_for("provider-keys", settings.PROVIDER_KEY_ENCRYPTION_KEYS)


def key_encrypt(secret: str) -> str:
    return _current().encrypt(secret.encode()).decode()


def key_decrypt(token: str) -> str:
    return _current().decrypt(token.encode()).decode()


def key_rotate(token: str) -> str:
    """The same secret, encrypted with the newest key."""
    return _current().rotate(token.encode()).decode()
