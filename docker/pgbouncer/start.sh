#!/bin/sh
# Writes PgBouncer's user list from the environment (the password never lands in the image), then runs it.
set -eu
umask 077
mkdir -p /tmp/pgbouncer
printf '"%s" "%s"\n' "${PGBOUNCER_USER:?}" "${PGBOUNCER_PASSWORD:?}" > /tmp/pgbouncer/userlist.txt
exec pgbouncer /etc/pgbouncer/pgbouncer.ini
