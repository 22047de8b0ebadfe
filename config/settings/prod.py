"""Production: refuses to start without a real secret, encryption keys for secrets at rest and a database."""

from __future__ import annotations

import os

from django.core.exceptions import ImproperlyConfigured

GENERATE_SECRET_KEY = 'python -c "import secrets; print(secrets.token_urlsafe(50))"'
GENERATE_FERNET_KEY = 'python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
# Every SECRET_KEY published in this repository (settings, compose, Dockerfile): anyone can sign sessions with them.
KNOWN_SECRET_KEYS = frozenset({
    "dev-insecure-secret-key-change-me",
    "local-compose-secret-change-me",
    "build-only-not-secret",
})
SECRET_KEY_MIN_LENGTH = 50  # Django's own deploy check (security.W009) asks for 50 characters, 5 distinct


def secret_key_problem(value: str) -> str | None:
    """Why `value` cannot sign production sessions, or None."""
    if value in KNOWN_SECRET_KEYS or value.startswith("django-insecure-"):
        return "is a default or published value"
    if len(value) < SECRET_KEY_MIN_LENGTH or len(set(value)) < 5:
        return f"is too weak (it needs at least {SECRET_KEY_MIN_LENGTH} random characters)"
    return None


def fernet_keys_problem(value: str) -> str | None:
    """Why `value` (comma-separated Fernet keys, newest first) cannot encrypt secrets at rest, or None."""
    from cryptography.fernet import Fernet

    keys = [key.strip() for key in value.split(",") if key.strip()]
    if not keys:
        return "must be set in production"
    for key in keys:
        try:
            Fernet(key)
        except ValueError:
            return "must list Fernet keys (32 url-safe base64-encoded bytes each), newest first"
    return None


for required in ("SECRET_KEY", "DATABASE_URL"):
    if not os.environ.get(required):
        hint = f" Generate one with: {GENERATE_SECRET_KEY}" if required == "SECRET_KEY" else ""
        raise ImproperlyConfigured(f"{required} must be set in production.{hint}")
if problem := secret_key_problem(os.environ["SECRET_KEY"]):
    raise ImproperlyConfigured(f"SECRET_KEY {problem}. Set a new one, generated with: {GENERATE_SECRET_KEY}")
# Without them the keys derive from SECRET_KEY: rotating the secret would lose every stored provider
# key and every TOTP secret.
for required in ("PROVIDER_KEY_ENCRYPTION_KEYS", "MFA_ENCRYPTION_KEYS"):
    if problem := fernet_keys_problem(os.environ.get(required, "")):
        raise ImproperlyConfigured(f"{required} {problem}. Generate a key with: {GENERATE_FERNET_KEY}")

from .base import *  # noqa: E402,F403

DEBUG = False
DEMO_SEED_ALLOWED = False
LOG_FORMAT = os.environ.get("LOG_FORMAT", "json")
LOGGING["handlers"]["console"]["formatter"] = LOG_FORMAT  # noqa: F405
EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
ACCOUNT_DEFAULT_HTTP_PROTOCOL = "https"
ADMIN_REQUIRE_MFA = env_bool("ADMIN_REQUIRE_MFA", True)  # noqa: F405
# Webhook endpoints are https in production, whatever the environment says.
WEBHOOKS_ALLOW_HTTP = False

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)  # noqa: F405
SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", "31536000"))
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
STRIPE_LIVE_MODE = env_bool("STRIPE_LIVE_MODE", False)  # noqa: F405
# The demo model is for development; a production site shows it only when asked to.
CHAT_DEMO_MODEL_ENABLED = env_bool("CHAT_DEMO_MODEL", False)  # noqa: F405
