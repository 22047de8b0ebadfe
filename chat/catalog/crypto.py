"""Provider keys at rest: MultiFernet over a rotating key set.

`PROVIDER_KEY_ENCRYPTION_KEYS` lists Fernet keys, newest first: new values are encrypted
with the first, any listed key decrypts. To rotate, put a new key first, run
`manage.py rotate_provider_keys`, then drop the old key.
"""

from __future__ import annotations

import base64
import hashlib
from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

__all__ = ["InvalidToken", "key_decrypt", "key_encrypt", "key_rotate"]


@cache
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        # Development default derived from SECRET_KEY; production sets its own keys.
        digest = hashlib.sha256(f"provider-keys:{settings.SECRET_KEY}".encode()).digest()
        keys = (base64.urlsafe_b64encode(digest).decode(),)
    return MultiFernet([Fernet(key) for key in keys])


def _current() -> MultiFernet:
    return _fernet(tuple(settings.PROVIDER_KEY_ENCRYPTION_KEYS))


def key_encrypt(secret: str) -> str:
    return _current().encrypt(secret.encode()).decode()


def key_decrypt(token: str) -> str:
    return _current().decrypt(token.encode()).decode()


def key_rotate(token: str) -> str:
    """The same secret, encrypted with the newest key."""
    return _current().rotate(token.encode()).decode()
