"""Settings shared by every environment. Environment values are read here, once."""

from __future__ import annotations

import os
from ipaddress import ip_network
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import dj_database_url
from celery.schedules import crontab
from csp.constants import NONE, SELF
from django.utils.translation import gettext_lazy as _

from config.processes import process_role

BASE_DIR = Path(__file__).resolve().parent.parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


# Core
SECRET_KEY = os.environ.get("SECRET_KEY", "dev-insecure-secret-key-change-me")
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
SITE_NAME = "Prumo"
# `seed_demo` creates a known password: never with production settings.
DEMO_SEED_ALLOWED = True
# Absolute links in emails sent outside a request (invitations).
SITE_URL = os.environ.get("SITE_URL", "http://127.0.0.1:8000")

# Tenancy: public holds what is global, each organization's schema its content.
SHARED_APPS = [
    "django_tenants",
    "tenants",
    "accounts",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.admin",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "allauth.usersessions",
    "djstripe",
    "billing",
    "chat.catalog",
]
TENANT_APPS = [
    "tenants.audit",
    "chat",
    "checks",
    "webhooks",
    "studio",
]
INSTALLED_APPS = SHARED_APPS + [app for app in TENANT_APPS if app not in SHARED_APPS]
TENANT_MODEL = "tenants.Organization"
TENANT_DOMAIN_MODEL = "tenants.Domain"
PUBLIC_SCHEMA_NAME = "public"
TENANT_LIMIT_SET_CALLS = True
DATABASE_ROUTERS = ["django_tenants.routers.TenantSyncRouter"]
# Organizations are reached by /o/<slug>/ unless they add a vanity domain.
TENANT_BASE_DOMAIN = os.environ.get("TENANT_BASE_DOMAIN", "localhost")
# Free abuse: each organization comes with free credits and invitations send e-mail to anyone.
ORGANIZATIONS_PER_USER_PER_DAY = int(os.environ.get("ORGANIZATIONS_PER_USER_PER_DAY", "3"))
# Attempts (valid or not) at /orgs/new/ per user: its "taken" answer must not list which addresses exist.
ORGANIZATION_CREATE_ATTEMPTS_PER_HOUR = int(os.environ.get("ORGANIZATION_CREATE_ATTEMPTS_PER_HOUR", "20"))
INVITATIONS_PER_ORGANIZATION_PER_HOUR = int(os.environ.get("INVITATIONS_PER_ORGANIZATION_PER_HOUR", "20"))

# Database
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/prumo")
# Processes whose requests or tasks run on many threads (web, generator: config.processes) take their
# connections from a bounded pool (Django's psycopg pool): at most DB_POOL_MAX_SIZE each, a request waits
# up to DB_POOL_TIMEOUT seconds for one, then gets a 503 (config.views.server_error). django-tenants sets
# the search_path again on every connection it takes from the pool (tests/test_db_pool.py proves it).
# Single-threaded processes (prefork worker children, beat, manage.py) hold one connection at most and
# use no pool; DB_CONN_MAX_AGE only applies to them (0: a new connection per request or task).
# Default sizes: a web worker's pages, streams opened without a token and sends without a send grant each hold
# one for their whole request (its composer sends and /v1 use ASYNC_DB_POOL_SIZE); a generator's answer holds
# one only to claim and to finish, never while it streams. With ASYNC_DB_POOL_SIZE, one of each comes to 40
# (docs/SCALING.md).
PROCESS_ROLE = process_role()
DB_POOL_DEFAULTS = {"web": 20, "generator": 8}  # the kinds whose requests or tasks run on many threads
DB_POOL_MAX_SIZE = int(os.environ.get("DB_POOL_MAX_SIZE", str(DB_POOL_DEFAULTS.get(PROCESS_ROLE, 0))))
DB_POOL_MIN_SIZE = min(int(os.environ.get("DB_POOL_MIN_SIZE", "1")), DB_POOL_MAX_SIZE)
DB_POOL_TIMEOUT = float(os.environ.get("DB_POOL_TIMEOUT", "10"))
# Seconds a client is told to wait (Retry-After) when a request got no connection in time (503).
OVERLOAD_RETRY_AFTER = int(os.environ.get("OVERLOAD_RETRY_AFTER", "5"))
DB_CONN_MAX_AGE = int(os.environ.get("DB_CONN_MAX_AGE", "0"))
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0 if DB_POOL_MAX_SIZE else DB_CONN_MAX_AGE,
                                              conn_health_checks=not DB_POOL_MAX_SIZE)}
DATABASES["default"]["ENGINE"] = "django_tenants.postgresql_backend"
# How this process's connections are named in pg_stat_activity (several deployments on one server, or
# one web process watched apart from the others, can be told apart by setting it).
DB_APPLICATION_NAME = os.environ.get("DB_APPLICATION_NAME", f"prumo-{PROCESS_ROLE}")
DATABASES["default"].setdefault("OPTIONS", {})["application_name"] = DB_APPLICATION_NAME
if DB_POOL_MAX_SIZE:
    DATABASES["default"]["OPTIONS"]["pool"] = {"min_size": DB_POOL_MIN_SIZE, "max_size": DB_POOL_MAX_SIZE,
                                               "timeout": DB_POOL_TIMEOUT, "name": DB_APPLICATION_NAME}

# Redis: cache, Celery broker and results, rate-limit counters.
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_url_with_db(url: str, db: int) -> str:
    """The same Redis server, another logical database."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = [(k, v) for k, v in parse_qsl(parts.query) if k != "db"] + [("db", str(db))]
        return f"unix://{parts.path}?{urlencode(query)}"
    return urlunsplit(parts._replace(path=f"/{db}"))


def celery_redis_url(url: str) -> str:
    """kombu names unix sockets `redis+socket://` and their database `virtual_host`."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = [("virtual_host" if k == "db" else k, v) for k, v in parse_qsl(parts.query)]
        return f"redis+socket://{parts.path}" + (f"?{urlencode(query)}" if query else "")
    return url


CACHES = {
    # Global: rate-limit counters and public data (e.g. company registry lookups).
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "prumo",
    },
    # Per organization: keys are prefixed with the current schema.
    "tenant": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "prumo",
        "KEY_FUNCTION": "django_tenants.cache.make_key",
        "REVERSE_KEY_FUNCTION": "django_tenants.cache.reverse_key",
    },
}

# Middleware
MIDDLEWARE = [
    "core.observability.HealthzMiddleware",
    "core.observability.RequestMetricsMiddleware",
    "core.observability.RequestIDMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "accounts.middleware.UserLanguageMiddleware",
    "tenants.middleware.TenantMiddleware",
    "billing.middleware.InsufficientCreditsMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "accounts.middleware.MFARequiredMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "core.toasts.HtmxToastsMiddleware",  # inside MessageMiddleware: reads messages before they are stored
    "allauth.account.middleware.AccountMiddleware",
    "allauth.usersessions.middleware.UserSessionsMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "tenants.context_processors.organizations",
            ],
        },
    },
]

# Authentication (allauth)
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "org_list"
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = "mandatory"
ACCOUNT_EMAIL_VERIFICATION_BY_CODE_ENABLED = True
ACCOUNT_LOGIN_BY_CODE_ENABLED = True
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_LOGOUT_ON_PASSWORD_CHANGE = False
ACCOUNT_ADAPTER = "accounts.adapters.AccountAdapter"
ACCOUNT_EMAIL_SUBJECT_PREFIX = "[Prumo] "
ACCOUNT_DEFAULT_HTTP_PROTOCOL = os.environ.get("ACCOUNT_DEFAULT_HTTP_PROTOCOL", "http")
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes"]
# TOTP secrets and recovery-code seeds are encrypted with these Fernet keys, newest first.
# Empty: derived from SECRET_KEY (development and tests only; production requires them).
MFA_ADAPTER = "accounts.adapters.MFAAdapter"
MFA_ENCRYPTION_KEYS = env_list("MFA_ENCRYPTION_KEYS")
# Staff without a second factor cannot use the admin (they are sent to enrol). On in production.
ADMIN_REQUIRE_MFA = env_bool("ADMIN_REQUIRE_MFA", False)
USERSESSIONS_TRACK_ACTIVITY = False

# Email: console in development, SMTP from the environment in production.
EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_FILE_PATH = os.environ.get("EMAIL_FILE_PATH", str(BASE_DIR / ".data" / "mail"))
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = int(os.environ.get("EMAIL_PORT", "25"))
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "Prumo <no-reply@prumo.local>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# Internationalization
LANGUAGE_CODE = "en"
LANGUAGES = [("en", _("English")), ("pt-br", _("Português (Brasil)"))]
LOCALE_PATHS = [BASE_DIR / "locale"]
USE_I18N = True
USE_TZ = True
TIME_ZONE = "UTC"

# Static and uploaded files: whitenoise for assets, django-storages for uploads in production.
STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
MEDIA_URL = "/media/"
MEDIA_ROOT = BASE_DIR / ".data" / "media"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
# Uploads go to S3 (or any S3-compatible store: MinIO, R2, …) when a bucket is set. Paths
# start with the organization's schema (chat.models.attachment_path); files are private.
if os.environ.get("AWS_STORAGE_BUCKET_NAME"):
    STORAGES["default"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": os.environ["AWS_STORAGE_BUCKET_NAME"],
            "endpoint_url": os.environ.get("AWS_S3_ENDPOINT_URL") or None,
            "region_name": os.environ.get("AWS_S3_REGION_NAME") or None,
            "default_acl": "private",
            "querystring_auth": True,
            "file_overwrite": False,
        },
    }

# Security
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
# Content Security Policy: every asset is ours, no inline script.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "connect-src": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
        "base-uri": [SELF],
        "object-src": [NONE],
    }
}
# One trusted source for the client address (allauth, django-ratelimit and DRF read it).
TRUSTED_PROXY_COUNT = int(os.environ.get("TRUSTED_PROXY_COUNT", "0"))
ALLAUTH_TRUSTED_PROXY_COUNT = TRUSTED_PROXY_COUNT

# Celery (tenant-schemas-celery carries the schema with each task)
CELERY_BROKER_URL = celery_redis_url(os.environ.get("CELERY_BROKER_URL", REDIS_URL))
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_SERIALIZER = "json"
# Nothing reads a task's return value, so there is no result backend: with one, every send subscribed to a result
# channel in Redis and every task stored its result (bench/RESULTS.md, Streams), and even with results ignored
# each new web thread built its own backend to queue a task (py-spy: 5% of a web worker's time under load).
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE: dict = {
    # Idempotent (one grant per organization and month), so hourly is only a retry cadence.
    "credits-grant-monthly": {"task": "billing.tasks.credits_grant_monthly_all", "schedule": 3600.0},
    # Past-due accounts whose grace period has ended drop to Free; idempotent, hourly is precise enough.
    "billing-dunning": {"task": "billing.tasks.billing_dunning_run", "schedule": 3600.0},
    "usage-rollup": {"task": "billing.tasks.usage_rollup_task", "schedule": 60.0},
    "meter-report": {"task": "billing.tasks.meter_reports_run", "schedule": 3600.0},
    # Answers whose worker died (no heartbeat) are closed as interrupted and billed for what they produced.
    "chat-generations-reap": {"task": "chat.tasks.generations_reap", "schedule": 15.0},
    # /v1 credit holds whose process died mid-call go back (GATEWAY_HOLD_TIMEOUT_SECONDS).
    "gateway-holds-reap": {"task": "chat.tasks.gateway_holds_reap", "schedule": 300.0},
    # Monitored CNPJ targets that are due get a fresh check; reports past retention are purged.
    "checks-monitoring": {"task": "checks.tasks.monitoring_fanout", "schedule": 3600.0},
    "checks-maintenance": {"task": "checks.tasks.checks_maintenance_fanout", "schedule": crontab(hour=3, minute=30)},
    # Audit events older than the plan's audit_retention_days are deleted (tenants.audit.services.audit_purge).
    "audit-retention": {"task": "tenants.audit.tasks.audit_purge_fanout", "schedule": crontab(hour=3, minute=45)},
}
# Registry lookups wait on rate limits: their own queue keeps them from delaying e-mails and the rest.
CHECKS_QUEUE = os.environ.get("CHECKS_QUEUE", "checks")
# Chat answers and titles: the generation worker's queue (a thread pool, config.processes).
GENERATION_QUEUE = os.environ.get("GENERATION_QUEUE", "generation")
# A worker thread claims an answer and builds its context; the answer then streams on the process's event loop
# (chat.loop), at most GENERATION_MAX_STREAMS at once per process, and GENERATION_CLOSERS threads close them.
# A warm shutdown waits up to GENERATION_DRAIN_SECONDS for the streaming ones (then the reaper closes them as
# interrupted): keep it under the orchestrator's grace period before SIGKILL (docker-compose.yml: 60 s).
GENERATION_MAX_STREAMS = int(os.environ.get("GENERATION_MAX_STREAMS", "1000"))
GENERATION_CLOSERS = int(os.environ.get("GENERATION_CLOSERS", "4"))
GENERATION_DRAIN_SECONDS = float(os.environ.get("GENERATION_DRAIN_SECONDS", "50"))
CELERY_TASK_ROUTES = {
    "checks.tasks.check_run_task": {"queue": CHECKS_QUEUE},
    "checks.tasks.batch_start_task": {"queue": CHECKS_QUEUE},
    "chat.tasks.generation_run": {"queue": GENERATION_QUEUE},
    "chat.tasks.thread_title": {"queue": GENERATION_QUEUE},
    "chat.tasks.trial_answer": {"queue": GENERATION_QUEUE},
}

# dj-stripe (the Organization is the customer; see billing/stripe.py)
STRIPE_LIVE_MODE = False
# Pinned, and sent with every request (ours and dj-stripe's) and set on the webhook endpoint.
# dj-stripe 2.11 accepts any YYYY-MM-DD version but still reads `invoice.subscription` and
# `subscription.current_period_*` at the top level, which 2025-03-31.basil moved: stay before it.
STRIPE_API_VERSION = "2024-04-10"
DJSTRIPE_FOREIGN_KEY_TO_FIELD = "id"
DJSTRIPE_SUBSCRIBER_MODEL = "tenants.Organization"
DJSTRIPE_SUBSCRIBER_MODEL_REQUEST_CALLBACK = "tenants.selectors.organization_for_request"
# No DJSTRIPE_WEBHOOK_SECRET: dj-stripe 2.11 verifies signatures with the secret stored on its
# WebhookEndpoint row, and webhooks arrive at /billing/stripe/webhook/<uuid>/ (billing.stripe).
# dj-stripe refuses keys that do not look like Stripe's (`sk_test_` + at least 24 characters).
STRIPE_TEST_SECRET_KEY = os.environ.get("STRIPE_SECRET_KEY", "sk_test_" + "0" * 24)
STRIPE_LIVE_SECRET_KEY = os.environ.get("STRIPE_LIVE_SECRET_KEY", "")
# A fake Stripe API for local runs and test servers; dj-stripe copies it to `stripe.api_base`.
if os.environ.get("STRIPE_API_BASE"):
    STRIPE_API_HOST = os.environ["STRIPE_API_BASE"]
# Dunning: a past-due subscription keeps its plan this many days after the failed renewal.
BILLING_GRACE_DAYS = int(os.environ.get("BILLING_GRACE_DAYS", "7"))
# Top-ups: credits bought per US dollar (100: one credit costs one cent), and the limits per purchase.
BILLING_CURRENCY = "usd"
STRIPE_MAX_NETWORK_RETRIES = int(os.environ.get("STRIPE_MAX_NETWORK_RETRIES", "0"))
# Stripe Billing meter that receives each closed day's credits (plans with metered overage).
STRIPE_METER_EVENT_NAME = os.environ.get("STRIPE_METER_EVENT_NAME", "prumo_credits")
BILLING_CREDITS_PER_USD = 100
BILLING_TOPUP_MIN_CREDITS = 500
BILLING_TOPUP_MAX_CREDITS = 1_000_000
# Plans not sold online (no Stripe price: Enterprise) offer a "Contact us" link to this address.
BILLING_SALES_EMAIL = os.environ.get("BILLING_SALES_EMAIL", "sales@prumo.local")

# Chat: AI providers. Platform keys come from here; organizations may add their own (encrypted).
LLM_PROVIDERS = {
    "openai": {"base_url": os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1"),
               "api_key": os.environ.get("OPENAI_API_KEY", "")},
    "deepseek": {"base_url": os.environ.get("DEEPSEEK_BASE_URL", "https://api.deepseek.com"),
                 "api_key": os.environ.get("DEEPSEEK_API_KEY", "")},
    "anthropic": {"base_url": os.environ.get("ANTHROPIC_BASE_URL", "https://api.anthropic.com"),
                  "api_key": os.environ.get("ANTHROPIC_API_KEY", "")},
    "gemini": {"base_url": os.environ.get("GEMINI_BASE_URL", "https://generativelanguage.googleapis.com"),
               "api_key": os.environ.get("GEMINI_API_KEY", "")},
    # Ollama has no key and no public default: set its URL to use it.
    "ollama": {"base_url": os.environ.get("OLLAMA_BASE_URL", ""), "api_key": ""},
}
LLM_CONNECT_TIMEOUT = float(os.environ.get("LLM_CONNECT_TIMEOUT", "5"))
# The longest wait for the next byte of an answer.
LLM_READ_TIMEOUT = float(os.environ.get("LLM_READ_TIMEOUT", "60"))
# The built-in demo model (deterministic local text) lets a fresh checkout chat with no provider.
CHAT_DEMO_MODEL_ENABLED = env_bool("CHAT_DEMO_MODEL", True)
# Seconds between the demo model's words (it streams like a real model).
CHAT_DEMO_DELAY = float(os.environ.get("CHAT_DEMO_DELAY", "0.03"))

# Fernet keys for organizations' provider keys, newest first (rotate: prepend a key, run
# `manage.py rotate_provider_keys`, drop the old one). Empty: derived from SECRET_KEY.
PROVIDER_KEY_ENCRYPTION_KEYS = env_list("PROVIDER_KEY_ENCRYPTION_KEYS")
# Chat answers: the most tokens an answer may use, and the share of a model's context
# window that attached files may fill.
CHAT_MAX_OUTPUT_TOKENS = int(os.environ.get("CHAT_MAX_OUTPUT_TOKENS", "4096"))
CHAT_ATTACHMENT_TOKEN_BUDGET = int(os.environ.get("CHAT_ATTACHMENT_TOKEN_BUDGET", "24000"))
# Reading an uploaded PDF (a task, in a child process): CPU seconds and memory it may use, and the
# decoded content-stream bytes over its pages (a shared stream counted per page) beyond which it is refused.
CHAT_PDF_CPU_SECONDS = int(os.environ.get("CHAT_PDF_CPU_SECONDS", "10"))
CHAT_PDF_MEMORY_MB = int(os.environ.get("CHAT_PDF_MEMORY_MB", "512"))
CHAT_PDF_CONTENT_BYTES = int(os.environ.get("CHAT_PDF_CONTENT_BYTES", str(8 * 1024 * 1024)))
# Streaming: deltas are batched this long before they go to Redis; an SSE connection ends
# (with `retry:`, the browser resumes) before gunicorn's graceful timeout would cut it.
CHAT_FLUSH_SECONDS = float(os.environ.get("CHAT_FLUSH_SECONDS", "0.05"))
CHAT_SSE_MAX_SECONDS = float(os.environ.get("CHAT_SSE_MAX_SECONDS", "25"))
CHAT_SSE_KEEPALIVE_SECONDS = float(os.environ.get("CHAT_SSE_KEEPALIVE_SECONDS", "10"))
# Answer streams one person may hold open at once (all tabs, all web processes); more get 429.
CHAT_STREAMS_PER_USER = int(os.environ.get("CHAT_STREAMS_PER_USER", "8"))
# How long the stream URL a page gets stays valid for direct serving (chat.streams.stream_token); past it the
# stream is served by Django's view all the same. Kept below an ended answer's stream lifetime in Redis
# (chat.generation.STREAM_TTL, an hour): a valid token whose stream is missing means the answer has not started.
CHAT_STREAM_TOKEN_SECONDS = min(int(os.environ.get("CHAT_STREAM_TOKEN_SECONDS", "900")), 3000)
# Threads per web process that run answer streams' short synchronous setup (middleware, the lookup).
CHAT_STREAM_SETUP_THREADS = int(os.environ.get("CHAT_STREAM_SETUP_THREADS", "4"))
# Chat sends (new, send, regenerate, edit) one web process runs at once (those without a send grant each on a
# thread of its own); the next ones wait up to CHAT_SEND_WAIT_SECONDS for a turn, then get 503 with Retry-After
# (the page retries).
CHAT_SEND_CONCURRENCY = int(os.environ.get("CHAT_SEND_CONCURRENCY", "16"))
CHAT_SEND_WAIT_SECONDS = float(os.environ.get("CHAT_SEND_WAIT_SECONDS", "5"))
# A thread page's composer sends without Django's request cycle, with a send grant bound to the session
# (chat.send_direct), valid this long; past it (or with CHAT_SEND_DIRECT off) Django's view serves the send.
CHAT_SEND_DIRECT = env_bool("CHAT_SEND_DIRECT", True)
CHAT_SEND_GRANT_SECONDS = int(os.environ.get("CHAT_SEND_GRANT_SECONDS", str(12 * 3600)))
# Redis connections per web process for streams: one blocking reader fans out to every
# stream, the rest serve short catch-up reads; callers wait for a free one, never fail.
CHAT_REDIS_MAX_CONNECTIONS = int(os.environ.get("CHAT_REDIS_MAX_CONNECTIONS", "32"))
# A generation whose heartbeat is older than this is declared interrupted (worker died).
CHAT_HEARTBEAT_SECONDS = float(os.environ.get("CHAT_HEARTBEAT_SECONDS", "2"))
CHAT_HEARTBEAT_TIMEOUT = float(os.environ.get("CHAT_HEARTBEAT_TIMEOUT", "15"))
# An answer no worker has claimed this long after it was queued (its task was lost, or it waited behind its
# organization's answers-at-once cap) is closed as failed, its hold released. The reaper runs every 15 s,
# so an accepted question ends within this + 15 s (+ the time its files took to read).
CHAT_PENDING_TIMEOUT = float(os.environ.get("CHAT_PENDING_TIMEOUT", "90"))
# Anonymous trial at /try: messages per visitor (cookie) and per client address, per 24 hours.
TRIAL_MESSAGES = int(os.environ.get("TRIAL_MESSAGES", "5"))
TRIAL_MESSAGES_PER_IP = int(os.environ.get("TRIAL_MESSAGES_PER_IP", "20"))
TRIAL_MAX_INPUT_CHARS = 4000
TRIAL_MAX_OUTPUT_TOKENS = 1024
# Circuit breaker per provider: this many failures within the window opens it for the cooldown.
CHAT_BREAKER_FAILURES = int(os.environ.get("CHAT_BREAKER_FAILURES", "5"))
CHAT_BREAKER_WINDOW = int(os.environ.get("CHAT_BREAKER_WINDOW", "60"))
CHAT_BREAKER_COOLDOWN = int(os.environ.get("CHAT_BREAKER_COOLDOWN", "30"))
# The longest a provider's Retry-After may keep a breaker open (seconds).
CHAT_BREAKER_MAX_COOLDOWN = int(os.environ.get("CHAT_BREAKER_MAX_COOLDOWN", "60"))

# Request bodies: form fields (files aside) are refused past DATA_UPLOAD_MAX_MEMORY_SIZE (400); an
# uploaded file spills to disk past FILE_UPLOAD_MAX_MEMORY_SIZE and is then held to the plan's
# max_upload_mb; API JSON bodies past API_JSON_MAX_BYTES get 413 unparsed (core.parsers).
DATA_UPLOAD_MAX_MEMORY_SIZE = int(os.environ.get("DATA_UPLOAD_MAX_MEMORY_SIZE", str(2_621_440)))
DATA_UPLOAD_MAX_NUMBER_FIELDS = 1000
DATA_UPLOAD_MAX_NUMBER_FILES = 20  # chat.serializers.ATTACHMENTS_MAX files per question
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
API_JSON_MAX_BYTES = int(os.environ.get("API_JSON_MAX_BYTES", str(2 * 1024 * 1024)))
# Whole bodies, before Django reads them (core.body_limit): uploads may carry the largest file
# any plan allows (UPLOAD_MAX_MB ≥ every Plan.max_upload_mb), every other request this many bytes.
UPLOAD_MAX_MB = int(os.environ.get("UPLOAD_MAX_MB", "500"))
REQUEST_BODY_MAX_BYTES = int(os.environ.get("REQUEST_BODY_MAX_BYTES", str(10 * 1024 * 1024)))

# REST framework
REST_FRAMEWORK = {
    "DEFAULT_PARSER_CLASSES": ["core.parsers.JSONParser", "rest_framework.parsers.FormParser",
                               "rest_framework.parsers.MultiPartParser"],
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "NUM_PROXIES": TRUSTED_PROXY_COUNT,
}
# OpenAPI (drf-spectacular): /api/schema/, docs at /api/docs/ from our static files (sidecar).
SPECTACULAR_SETTINGS = {
    "TITLE": "Prumo API",
    "DESCRIPTION": "The organization API (/api/v1/) and the OpenAI-compatible endpoints (/v1/).",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # No deep links: Swagger UI nests each one (a link) inside its operation's button, which screen readers cannot use.
    "SWAGGER_UI_SETTINGS": {"deepLinking": False},
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "config.openapi.api_schema_postprocess",
    ],
    # Several models have a Status; name each enum after its model.
    "ENUM_NAME_OVERRIDES": {"CheckStatusEnum": "checks.models.Check.Status"},
}

# Rate limits (django-ratelimit counters live in the global Redis cache). Plans set the API's
# per-minute limits; calls without a valid key are limited per client address.
API_UNAUTHENTICATED_PER_MINUTE = int(os.environ.get("API_UNAUTHENTICATED_PER_MINUTE", "30"))
RATELIMIT_USE_CACHE = "default"
RATELIMIT_VIEW = "config.views.ratelimited"

# The /v1 gateway (chat.v1) and the chat composer's sends (chat.send_direct) share an async PostgreSQL pool per
# process (core.db_async). Then the largest request body /v1 reads, and how long an unsettled hold may stay
# open before the reaper releases it (a process that died mid-call; longer than any upstream call can take).
ASYNC_DB_POOL_SIZE = int(os.environ.get("ASYNC_DB_POOL_SIZE", "12"))
GATEWAY_MAX_BODY_BYTES = int(os.environ.get("GATEWAY_MAX_BODY_BYTES", str(25 * 1024 * 1024)))
GATEWAY_HOLD_TIMEOUT_SECONDS = int(os.environ.get("GATEWAY_HOLD_TIMEOUT_SECONDS", "1800"))
# `tools` and `response_format` are sent to the provider as given: their size is capped (400 beyond).
GATEWAY_TOOLS_MAX_COUNT = int(os.environ.get("GATEWAY_TOOLS_MAX_COUNT", "128"))
GATEWAY_TOOLS_MAX_BYTES = int(os.environ.get("GATEWAY_TOOLS_MAX_BYTES", str(64 * 1024)))
GATEWAY_RESPONSE_FORMAT_MAX_BYTES = int(os.environ.get("GATEWAY_RESPONSE_FORMAT_MAX_BYTES", str(64 * 1024)))

# Logging: readable in development, JSON in production (see prod.py).
LOG_FORMAT = os.environ.get("LOG_FORMAT", "text")
LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_context": {"()": "core.observability.RequestContextFilter"}},
    "formatters": {
        "text": {
            "format": "%(asctime)s %(levelname)s %(name)s [req=%(request_id)s org=%(organization)s"
            " user=%(user_id)s] %(message)s",
        },
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s %(organization)s %(user_id)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["request_context"],
        },
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "django.db.backends": {"level": "WARNING"},
        "django.server": {"level": "WARNING"},
    },
}

# Observability
# /metrics (config.metrics): with METRICS_TOKEN, scrapers send `Authorization: Bearer <token>`; without it only
# requests from this machine (loopback, not through a proxy) get an answer, everyone else 404.
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")
# A Celery worker's own samples (its processes': PROMETHEUS_MULTIPROC_DIR) at http://<worker>:<port>/metrics, same
# rule for who may scrape; empty: none (a worker sharing the web server's multiprocess directory needs none).
METRICS_WORKER_PORT = int(os.environ.get("METRICS_WORKER_PORT") or 0)
# /readyz also wants a Celery worker to have answered a ping within READYZ_WORKER_MAX_AGE seconds (off: a web-only
# node stays ready without workers; the database, Redis and the broker are always checked).
READYZ_REQUIRE_WORKER = env_bool("READYZ_REQUIRE_WORKER", False)
READYZ_WORKER_MAX_AGE = float(os.environ.get("READYZ_WORKER_MAX_AGE", "30"))
# Errors to Sentry when SENTRY_DSN is set (core.observability.sentry_init: Django, Celery, ERROR log records;
# no personal data; the request id as a tag); the 500 page then says the team was notified.
SENTRY_DSN = os.environ.get("SENTRY_DSN", "")
SENTRY_ENVIRONMENT = os.environ.get("SENTRY_ENVIRONMENT", "")
SENTRY_RELEASE = os.environ.get("SENTRY_RELEASE", "")
if SENTRY_DSN:
    from core.observability import sentry_init

    sentry_init(dsn=SENTRY_DSN, environment=SENTRY_ENVIRONMENT, release=SENTRY_RELEASE)
# Queues whose length /metrics reports besides the default and the routed ones (comma-separated).
METRICS_CELERY_QUEUES = [name for name in os.environ.get("METRICS_CELERY_QUEUES", "billing,webhooks").split(",")
                         if name.strip()]
# PROMETHEUS_MULTIPROC_DIR (read by prometheus-client itself, from the environment): a directory where every
# process on the node (gunicorn's workers, Celery workers) writes its samples; /metrics adds them up. Set it for
# gunicorn with several workers; Celery workers share it on the same node (config/gunicorn.py cleans it at start).

# Checks (CNPJ registries)
# Public registries asked in turn for a company's data (checks.registries); no keys needed.
CNPJWS_BASE_URL = os.environ.get("CNPJWS_BASE_URL", "https://publica.cnpj.ws")
BRASILAPI_BASE_URL = os.environ.get("BRASILAPI_BASE_URL", "https://brasilapi.com.br")
MINHARECEITA_BASE_URL = os.environ.get("MINHARECEITA_BASE_URL", "https://minhareceita.org")
RECEITAWS_BASE_URL = os.environ.get("RECEITAWS_BASE_URL", "https://receitaws.com.br")
CHECKS_CONNECT_TIMEOUT = float(os.environ.get("CHECKS_CONNECT_TIMEOUT", "3"))
# BrasilAPI and minha-receita give up upstream after ~10 s.
CHECKS_READ_TIMEOUT = float(os.environ.get("CHECKS_READ_TIMEOUT", "12"))
CHECKS_USER_AGENT = os.environ.get("CHECKS_USER_AGENT", f"Prumo/1.0 (+{SITE_URL})")
# Requests per window (seconds) for each provider, counted in Redis for the whole deployment
# (every worker and organization): "3/60", or several windows "1/1,60/60"; empty = no limit.
# cnpj.ws and ReceitaWS free tiers allow 3 a minute per IP; the others have no published limit.
CHECKS_RATE_LIMITS = {
    "cnpjws": os.environ.get("CNPJWS_RATE_LIMIT", "3/60"),
    "brasilapi": os.environ.get("BRASILAPI_RATE_LIMIT", "1/1,60/60"),
    "minhareceita": os.environ.get("MINHARECEITA_RATE_LIMIT", "1/1,60/60"),
    "receitaws": os.environ.get("RECEITAWS_RATE_LIMIT", "3/60"),
}
# A 429 without Retry-After pauses that provider this long (seconds), for every worker.
CHECKS_COOLDOWN_DEFAULT = int(os.environ.get("CHECKS_COOLDOWN_DEFAULT", "60"))
# Circuit breaker per provider: this many failures (5xx, timeouts) within the window open it
# for the cooldown; then one probe request decides whether it closes again.
CHECKS_BREAKER_FAILURES = int(os.environ.get("CHECKS_BREAKER_FAILURES", "3"))
CHECKS_BREAKER_WINDOW = int(os.environ.get("CHECKS_BREAKER_WINDOW", "60"))
CHECKS_BREAKER_COOLDOWN = int(os.environ.get("CHECKS_BREAKER_COOLDOWN", "120"))
# Namespace of the limiter, cooldown and breaker keys in Redis (global, not per organization).
CHECKS_REDIS_PREFIX = os.environ.get("CHECKS_REDIS_PREFIX", "checks")
# The normalized results are cached for every organization (public data): found companies for
# CHECKS_CACHE_TTL seconds, confirmed not-found ones for CHECKS_NEGATIVE_TTL; one lookup per CNPJ
# at a time (the others wait up to CHECKS_LOCK_SECONDS for its result).
CHECKS_CACHE_TTL = int(os.environ.get("CHECKS_CACHE_TTL", str(24 * 3600)))
CHECKS_NEGATIVE_TTL = int(os.environ.get("CHECKS_NEGATIVE_TTL", str(6 * 3600)))
CHECKS_LOCK_SECONDS = int(os.environ.get("CHECKS_LOCK_SECONDS", "60"))
# A check whose lookups keep failing is retried with backoff this many times, then fails.
CHECKS_MAX_RUNS = int(os.environ.get("CHECKS_MAX_RUNS", "5"))

# Outbound webhooks (webhooks/, core/egress.py)
# Endpoint URLs must be https; http is allowed in development only (dev.py).
WEBHOOKS_ALLOW_HTTP = env_bool("WEBHOOKS_ALLOW_HTTP", False)
# CIDRs deliveries may reach although they are private, loopback, … ("127.0.0.0/8,10.1.0.0/16"): tests
# and on-premise installs. Empty: only public addresses. The cloud metadata addresses are never reached.
# Parsed here, so that a typo stops the process at start rather than failing every delivery.
WEBHOOKS_ALLOWED_PRIVATE_NETWORKS = [str(ip_network(value, strict=False))
                                     for value in env_list("WEBHOOKS_ALLOWED_PRIVATE_NETWORKS")]
# Fernet keys for endpoints' signing secrets, newest first; empty: the provider keys' set.
WEBHOOK_SECRET_ENCRYPTION_KEYS = env_list("WEBHOOK_SECRET_ENCRYPTION_KEYS") or PROVIDER_KEY_ENCRYPTION_KEYS
# Deliveries one endpoint may have in flight at once (every worker together); the others wait their turn.
WEBHOOKS_ENDPOINT_CONCURRENCY = int(os.environ.get("WEBHOOKS_ENDPOINT_CONCURRENCY", "2"))
WEBHOOKS_QUEUE = os.environ.get("WEBHOOKS_QUEUE", "webhooks")
CELERY_TASK_ROUTES["webhooks.tasks.*"] = {"queue": WEBHOOKS_QUEUE}
# Deliveries whose next try is overdue (a lost task) are queued again; a try is never sent twice.
CELERY_BEAT_SCHEDULE["webhooks-deliveries-due"] = {"task": "webhooks.tasks.deliveries_due_fanout", "schedule": 300.0}
# Deliveries that failed for good (dead letters) are kept this many days, then purged (daily).
WEBHOOKS_DEAD_LETTER_DAYS = int(os.environ.get("WEBHOOKS_DEAD_LETTER_DAYS", "30"))
CELERY_BEAT_SCHEDULE["webhooks-dead-letters-purge"] = {"task": "webhooks.tasks.dead_letters_purge_fanout",
                                                       "schedule": crontab(hour=4, minute=10)}

# Studio: generation jobs on their own queue. At most STUDIO_CONCURRENCY_<KIND> jobs of a kind run at once over
# every worker (a Redis semaphore with leases), and the plan's `concurrent_jobs` of one organization.
# Transient provider failures retry with exponential backoff and jitter (from STUDIO_RETRY_BASE_SECONDS) up to
# STUDIO_MAX_ATTEMPTS; a running job whose worker stops renewing its lease is queued again after it.
STUDIO_QUEUE = os.environ.get("STUDIO_QUEUE", "studio")
CELERY_TASK_ROUTES["studio.tasks.job_run_task"] = {"queue": STUDIO_QUEUE}
STUDIO_CONCURRENCY = {kind: int(os.environ.get(f"STUDIO_CONCURRENCY_{kind.upper()}", default)) for kind, default in
                      (("image", 5), ("video", 2), ("speech", 5), ("transcription", 5))}
STUDIO_MAX_ATTEMPTS = int(os.environ.get("STUDIO_MAX_ATTEMPTS", "3"))
STUDIO_RETRY_BASE_SECONDS = float(os.environ.get("STUDIO_RETRY_BASE_SECONDS", "5"))
STUDIO_LEASE_SECONDS = int(os.environ.get("STUDIO_LEASE_SECONDS", "300"))
STUDIO_BUSY_RETRY_SECONDS = float(os.environ.get("STUDIO_BUSY_RETRY_SECONDS", "5"))
CELERY_BEAT_SCHEDULE["studio-jobs-reap"] = {"task": "studio.tasks.jobs_reap_fanout", "schedule": 300.0}
