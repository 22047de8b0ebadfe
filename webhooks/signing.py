"""Standard Webhooks 1.0 signatures (https://www.standardwebhooks.com/).

A secret is `whsec_` + base64 of random bytes; the HMAC key is those bytes. A delivery carries
`webhook-id`, `webhook-timestamp` (seconds) and `webhook-signature`: `v1,` + base64 of
HMAC-SHA256 over `id.timestamp.body`, one per valid secret, space-separated (while a rotated
secret is still valid, receivers holding either one can verify).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # the specification asks for 24 to 64


def secret_generate() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_…` secret."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret starts with whsec_")
    return base64.b64decode(secret[len(SECRET_PREFIX):])


def signature(*, secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(*, secrets: Iterable[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for `body`, signed with each of `secrets`."""
    signatures = " ".join(signature(secret=secret, msg_id=msg_id, timestamp=timestamp, body=body)
                          for secret in secrets)
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": signatures}
