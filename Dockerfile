# syntax=docker/dockerfile:1

# ---- builder: compile and install dependencies into a self-contained virtualenv ----
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Compilers only live here, for any dependency without a prebuilt wheel.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:$PATH"

# Requirements first: this layer is cached until requirements.txt changes.
COPY requirements.txt /tmp/requirements.txt
RUN pip install --upgrade pip \
    && pip install -r /tmp/requirements.txt

# ---- runtime: slim image, no compilers, non-root ----
FROM python:3.11-slim AS runtime

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH="/opt/venv/bin:$PATH" \
    DJANGO_SETTINGS_MODULE=config.settings.prod \
    PORT=8000

RUN groupadd --system --gid 10001 prumo \
    && useradd --system --uid 10001 --gid prumo --create-home --home-dir /home/prumo \
       --shell /usr/sbin/nologin --no-log-init prumo

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
# Code stays root-owned (read-only for the app user); see .dockerignore for what is left out.
COPY . /app
RUN chmod 0755 /app/docker/entrypoint.sh

# Static assets are baked into the image (whitenoise serves them). prod settings insist on
# SECRET_KEY, PROVIDER_KEY_ENCRYPTION_KEYS, MFA_ENCRYPTION_KEYS and DATABASE_URL, so random
# throwaway values are given to this one command only: they are not in the image's environment,
# and collectstatic never connects to the database.
RUN SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(50))')" \
    PROVIDER_KEY_ENCRYPTION_KEYS="$(python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')" \
    MFA_ENCRYPTION_KEYS="$(python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')" \
    DATABASE_URL=postgres://build:build@localhost:5432/build \
    python manage.py collectstatic --noinput

# Uploads (MEDIA_ROOT = /app/.data/media) are the only writable app path; mount a volume here.
# Created owned by the app user so a fresh named volume inherits that ownership.
RUN mkdir -p /app/.data/media && chown -R prumo:prumo /app/.data

USER prumo

# Every process of a container (gunicorn's workers, a Celery worker's children) writes its metric samples here and
# /metrics adds them up (core.metrics). Set only now, after the build steps that ran as root, so the directory is
# made by the app user at start; compose mounts a tmpfs over it. Stale files (dead processes') are removed when
# gunicorn or a Celery worker starts.
ENV PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus

EXPOSE 8000

# /healthz only says the process answers. python instead of curl (not in slim). X-Forwarded-Proto
# keeps prod's SECURE_SSL_REDIRECT from bouncing the plain-HTTP probe to https; the Host
# (127.0.0.1) must be in ALLOWED_HOSTS. Worker and beat containers must override this check.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request as r; r.urlopen(r.Request('http://127.0.0.1:${PORT:-8000}/healthz', headers={'X-Forwarded-Proto': 'https'}), timeout=4)" || exit 1

ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["web"]
