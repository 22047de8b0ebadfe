"""The base class of every Celery task: a tenant task never runs outside its organization's schema.

tenant-schemas-celery switches the schema in a `task_prerun` signal handler. Celery logs a
handler's exception and runs the task anyway, so when the switch cannot reach the database
(PostgreSQL refusing connections, a pool timing out) the task ran in whatever schema the
connection was left in, usually `public` ("relation chat_message does not exist", or worse, a
write to a shared table). `SchemaCheckedTask` checks, as the task starts, that the connection is in
the schema the caller sent: if not, a worker retries the task later (its arguments are untouched:
nothing ran) and, after `SCHEMA_RETRIES`, it fails; run eagerly it raises at once.
"""

from __future__ import annotations

import logging

from django.db import connection
from tenant_schemas_celery.app import get_schema_name_from_task
from tenant_schemas_celery.task import TenantTask

logger = logging.getLogger(__name__)

SCHEMA_RETRIES = 8
SCHEMA_RETRY_MAX_SECONDS = 30


class SchemaSwitchFailed(RuntimeError):
    """The task's schema could not be set, so its body did not run."""


class SchemaCheckedTask(TenantTask):
    abstract = True

    def __call__(self, *args, **kwargs):
        wanted = get_schema_name_from_task(self, kwargs)
        if wanted and connection.schema_name != wanted:
            self._schema_refuse(wanted)
        return super().__call__(*args, **kwargs)

    def _schema_refuse(self, wanted: str) -> None:
        error = SchemaSwitchFailed(f"{self.name} needs schema {wanted!r} but the connection is in "
                                   f"{connection.schema_name!r}: the schema switch failed, the task did not run")
        if self.request.is_eager or self.request.called_directly:
            raise error
        # The failed switch may have left a broken connection: the next attempt opens a new one.
        connection.close()
        retries = self.request.retries
        logger.warning("%s (attempt %s of %s)", error, retries + 1, SCHEMA_RETRIES + 1)
        raise self.retry(exc=error, countdown=min(2 ** retries, SCHEMA_RETRY_MAX_SECONDS),
                         max_retries=SCHEMA_RETRIES)
