# Prumo. `make run` and `make test` work on a fresh machine: with DATABASE_URL / REDIS_URL
# unset they start an embedded PostgreSQL and Redis under .data/.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Run as a file, not `-m config.embedded`: importing the config package sets a default
# DJANGO_SETTINGS_MODULE (for Celery) that would leak into the command.
EMBED := $(PY) config/embedded.py --

.PHONY: install run serve test migrate pending drift bench-tenants bench-streams messages lint clean

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "Python 3.11 is required ($(PYTHON) not found)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt requirements-dev.txt | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@touch $(STAMP)

install: $(STAMP)

## Development: migrate, seed the demo, run web + Celery worker + beat. Ctrl-C stops all.
run: install
	$(EMBED) $(PY) -m config.devserver

## The production server in the foreground, exactly as the Docker image runs it: production
## settings, gunicorn + uvicorn worker, PORT (8000) and WEB_CONCURRENCY. Plain HTTP locally.
SERVE_ENV := DJANGO_SETTINGS_MODULE=$${DJANGO_SETTINGS_MODULE:-config.settings.prod} \
	SECRET_KEY="$${SECRET_KEY:-$$(cat .data/secret_key)}" \
	PROVIDER_KEY_ENCRYPTION_KEYS="$${PROVIDER_KEY_ENCRYPTION_KEYS:-$$(cat .data/provider_key)}" \
	MFA_ENCRYPTION_KEYS="$${MFA_ENCRYPTION_KEYS:-$$(cat .data/mfa_key)}" SECURE_SSL_REDIRECT=$${SECURE_SSL_REDIRECT:-0} \
	SECURE_HSTS_SECONDS=$${SECURE_HSTS_SECONDS:-0} ALLOWED_HOSTS=$${ALLOWED_HOSTS:-localhost,127.0.0.1}

.data/secret_key: | $(PY)
	@mkdir -p .data && $(PY) -c "import secrets; print(secrets.token_urlsafe(50))" > $@

.data/provider_key: | $(PY)
	@mkdir -p .data && $(PY) -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())" > $@

.data/mfa_key: | $(PY)
	@mkdir -p .data && $(PY) -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())" > $@

serve: install .data/secret_key .data/provider_key .data/mfa_key
	$(EMBED) sh -c '$(SERVE_ENV) $(PY) manage.py deploy_migrate && \
		$(SERVE_ENV) $(PY) manage.py collectstatic --noinput --verbosity 0 && \
		$(SERVE_ENV) exec $(VENV)/bin/gunicorn config.asgi:application -c config/gunicorn.py'

## The whole test suite (embedded services unless DATABASE_URL / REDIS_URL are set).
test: install
	$(EMBED) $(PY) -m pytest $(PYTEST_ARGS)

## Deploy path: migrate only the schemas that are behind.
migrate: install
	$(EMBED) $(PY) manage.py deploy_migrate

pending: install
	$(EMBED) $(PY) manage.py pending_migrations

drift: install
	$(EMBED) $(PY) manage.py schema_drift

bench-tenants: install
	$(EMBED) $(PY) bench/tenants.py --orgs 1000

bench-streams: install
	$(PY) bench/streams.py

messages: install
	$(PY) manage.py makemessages -l pt_BR --no-location --no-obsolete --ignore=.venv --ignore=staticfiles --ignore=.data --ignore=bench --ignore=tests
	$(PY) manage.py compilemessages -l pt_BR --ignore=.venv

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf staticfiles .pytest_cache
