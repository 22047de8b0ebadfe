#!/usr/bin/env bash
# Container entrypoint: one image, four roles.
#   web        migrate the schemas that are behind (unless MIGRATE_ON_START=0), then serve HTTP
#   worker     Celery worker on every queue but `generation`
#   generator  Celery worker for chat answers: threads, many at once (they wait on providers)
#   beat       Celery beat (run exactly one)
#   *          anything else runs as given, e.g. `docker run IMAGE python manage.py shell`
set -euo pipefail

role="${1:-web}"

case "$role" in
  web)
    shift || true
    if [[ "${MIGRATE_ON_START:-1}" == "1" ]]; then
      # Idempotent: only schemas with pending migrations are touched. With several web
      # replicas, prefer MIGRATE_ON_START=0 and a one-off release/pre-deploy job.
      python manage.py deploy_migrate
    fi
    # exec: gunicorn becomes PID 1 and receives SIGTERM directly (graceful shutdown).
    exec gunicorn config.asgi:application -c config/gunicorn.py "$@"
    ;;
  worker)
    shift
    exec celery -A config worker -Q "default,${CHECKS_QUEUE:-checks},webhooks,billing,${STUDIO_QUEUE:-studio}" --loglevel INFO "$@"
    ;;
  generator)
    shift
    exec celery -A config worker -Q "${GENERATION_QUEUE:-generation}" --pool threads --concurrency "${GENERATION_CONCURRENCY:-64}" \
      --loglevel INFO "$@"
    ;;
  beat)
    shift
    # The schedule state file goes to /tmp: the app directory is read-only for the app user.
    exec celery -A config beat --loglevel INFO --schedule /tmp/celerybeat-schedule "$@"
    ;;
  *)
    exec "$@"
    ;;
esac
