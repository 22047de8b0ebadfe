"""Production: refuses to start without a real secret and database."""

import os

from django.core.exceptions import ImproperlyConfigured

for required in ("SECRET_KEY", "DATABASE_URL"):
    if not os.environ.get(required):
        raise ImproperlyConfigured(f"{required} must be set in production.")

from .base import *  # noqa: E402,F403

DEBUG = False
DEMO_SEED_ALLOWED = False
LOG_FORMAT = os.environ.get("LOG_FORMAT", "json")
LOGGING["handlers"]["console"]["formatter"] = LOG_FORMAT  # noqa: F405
EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
ACCOUNT_DEFAULT_HTTP_PROTOCOL = "https"
ADMIN_REQUIRE_MFA = env_bool("ADMIN_REQUIRE_MFA", True)  # noqa: F405
if not MFA_ENCRYPTION_KEYS:  # noqa: F405
    raise ImproperlyConfigured("MFA_ENCRYPTION_KEYS must be set in production (Fernet keys, newest first).")

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
