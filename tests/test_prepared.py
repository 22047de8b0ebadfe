"""core.prepared: a statement prepared once per connection, executed with its named parameters, prepared again
when the session lost it."""

from __future__ import annotations

import threading

import pytest
from django.db import ProgrammingError, connection, connections, transaction
from django.test.utils import CaptureQueriesContext

from core.prepared import PreparedStatement

SUM = PreparedStatement("test_sum", "SELECT %(a)s::integer + %(b)s::integer, %(a)s::integer, %(label)s::text")


def run(statement: PreparedStatement, **params):
    with connection.cursor() as cursor:
        statement.execute(cursor, params)
        return cursor.fetchone()


@pytest.mark.django_db
def test_a_statement_is_prepared_once_per_connection_then_executed_with_its_named_parameters():
    with CaptureQueriesContext(connection) as first:
        assert run(SUM, a=2, b=3, label="it's") == (5, 2, "it's")
    with CaptureQueriesContext(connection) as again:
        assert run(SUM, b=10, a=-4, label=None) == (6, -4, None)
    prepares = [q["sql"] for q in first.captured_queries if q["sql"].startswith("PREPARE")]
    assert prepares in ([], [f"PREPARE {SUM.name} AS SELECT $1::integer + $2::integer, $1::integer, $3::text"])
    assert [q["sql"].replace(" ", "") for q in again.captured_queries] == [f"EXECUTE{SUM.name}(-4,10,NULL)"]


def on_a_connection_of_its_own(django_db_blocker, job):
    """`job()` in a thread, on a connection of its own (in autocommit, as a request's), closed afterwards: the
    statements it deallocates are no other test's."""
    results = []

    def run_job():
        try:
            results.append(job())
        finally:
            connections.close_all()

    with django_db_blocker.unblock():
        thread = threading.Thread(target=run_job)
        thread.start()
        thread.join(timeout=30)
    return results


def test_in_a_transaction_a_lost_statement_fails_once_then_is_prepared_again(django_db_setup, django_db_blocker):
    def job():
        run(SUM, a=1, b=1, label="")
        with connection.cursor() as cursor:
            cursor.execute("DEALLOCATE ALL")  # what DISCARD ALL (a pooler's reset) does too
        with pytest.raises(ProgrammingError), transaction.atomic():  # the failed statement cannot be retried
            run(SUM, a=1, b=2, label="")
        with transaction.atomic():
            return run(SUM, a=1, b=2, label="x")

    assert on_a_connection_of_its_own(django_db_blocker, job) == [(3, 1, "x")]


def test_outside_a_transaction_a_lost_statement_is_prepared_again_at_once(django_db_setup, django_db_blocker):
    def job():
        run(SUM, a=1, b=1, label="")
        with connection.cursor() as cursor:
            cursor.execute("DEALLOCATE ALL")
        return run(SUM, a=20, b=22, label="again")

    assert on_a_connection_of_its_own(django_db_blocker, job) == [(42, 20, "again")]
