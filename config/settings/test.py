import os

from .base import *  # noqa: F403

DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Server processes started by tests write mail to files the tests read (EMAIL_FILE_PATH).
EMAIL_BACKEND = os.environ.get("TEST_EMAIL_BACKEND", "django.core.mail.backends.locmem.EmailBackend")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Server processes started by tests serve assets straight from the app folders.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
# Tests (and the servers and workers they start) use their own Redis database, so a
# development worker on the same Redis never takes a test's tasks.
REDIS_URL = redis_url_with_db(REDIS_URL, 15)  # noqa: F405
CACHES["default"]["LOCATION"] = CACHES["tenant"]["LOCATION"] = REDIS_URL  # noqa: F405
CELERY_BROKER_URL = celery_redis_url(REDIS_URL)  # noqa: F405
CACHES["default"]["KEY_PREFIX"] = CACHES["tenant"]["KEY_PREFIX"] = "prumo-test"  # noqa: F405
ACCOUNT_RATE_LIMITS = False
# In-process tests run tasks eagerly; server and worker processes started by tests set
# CELERY_TASK_ALWAYS_EAGER=0 so that a real worker takes them from Redis.
CELERY_TASK_ALWAYS_EAGER = os.environ.get("CELERY_TASK_ALWAYS_EAGER", "1") == "1"
CELERY_TASK_EAGER_PROPAGATES = True
# Test users repeat across tests and runs while Redis counters persist: tests that are about
# this limit lower it themselves.
ORGANIZATION_CREATE_ATTEMPTS_PER_HOUR = 10_000
# One TOTP period either side, so a code a test computes just before a 30 s boundary is still accepted.
MFA_TOTP_TOLERANCE = 1
# Webhook deliveries go to receivers the tests run on 127.0.0.1, over http.
WEBHOOKS_ALLOW_HTTP = True
WEBHOOKS_ALLOWED_PRIVATE_NETWORKS = ["127.0.0.0/8"]
