"""Secrets at rest: a MultiFernet over a rotating key set, one per purpose.

A setting lists Fernet keys, newest first: new values are encrypted with the first, any
listed key decrypts. Without keys (development and tests) one is derived from SECRET_KEY and
the purpose; production settings refuse to load without their own keys.
"""

from __future__ import annotations

import base64
import hashlib
from functools import cache

from cryptography.fernet import Fernet, MultiFernet
from django.conf import settings


@cache
def _fernet(purpose: str, keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        digest = hashlib.sha256(f"{purpose}:{settings.SECRET_KEY}".encode()).digest()
        keys = (base64.urlsafe_b64encode(digest).decode(),)
    return MultiFernet([Fernet(key) for key in keys])


def fernet_for(purpose: str, keys: list[str]) -> MultiFernet:
    """The key set `keys` (a setting's value), or the development key derived for `purpose`."""
    return _fernet(purpose, tuple(keys))
