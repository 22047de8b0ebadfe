"""PgBouncer in front of PostgreSQL (issue 12, item 7), through Debian's real `pgbouncer` running the compose
file's configuration (docker/pgbouncer/pgbouncer.ini).

Which pool mode is safe: django-tenants sets an organization's `search_path` on a connection once and keeps
it while that connection serves the organization. In transaction mode PgBouncer hands each statement to
whichever server connection is free, so a statement can run with another client's `search_path`: another
organization's tables. Session mode gives a client one server connection for as long as it is connected, and
`DISCARD ALL` before the next client gets it. The first tests show both; the last runs the stack (two web
workers, a generation worker) through session mode and checks each organization only touched its own schema.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest
from django.db import connection
from django_tenants.utils import schema_context

from chat.models import Message

from .servers import pgbouncer_binary, start_celery_worker, start_live_server, start_pgbouncer
from .test_db_pool import POOL, peak_connections, sign_in, twin_threads, twins_check, twins_exercise  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    pgbouncer_binary() is None, reason="pgbouncer is missing: install Debian's pgbouncer package to run these tests")]

ANSWER_TIMEOUT = 60.0


def client(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True)


def test_transaction_pooling_would_run_one_organizations_statement_in_anothers_schema(test_database_url, tmp_path):
    bouncer = start_pgbouncer(database_url=test_database_url, workdir=tmp_path,
                              settings={"pool_mode": "transaction", "default_pool_size": "1",
                                        "max_db_connections": "1"})
    try:
        with client(bouncer.url) as a, client(bouncer.url) as b:
            a.execute("SET search_path = org_a, public")  # what django-tenants does for a's organization
            b.execute("SET search_path = org_b, public")
            # a's next statement runs on the server connection b just set: in org_b's schema.
            assert a.execute("SHOW search_path").fetchone()[0] == "org_b, public"
    finally:
        bouncer.stop()


def test_session_pooling_keeps_each_client_in_its_schema_and_resets_it_for_the_next(test_database_url, tmp_path):
    bouncer = start_pgbouncer(database_url=test_database_url, workdir=tmp_path,
                              settings={"default_pool_size": "2", "max_db_connections": "2"})
    try:
        with client(bouncer.url) as a, client(bouncer.url) as b:
            a.execute("SET search_path = org_a, public")
            b.execute("SET search_path = org_b, public")
            assert a.execute("SHOW search_path").fetchone()[0] == "org_a, public"
            assert b.execute("SHOW search_path").fetchone()[0] == "org_b, public"
            used = {conn.execute("SELECT pg_backend_pid()").fetchone()[0] for conn in (a, b)}
        with client(bouncer.url) as c:  # one of the same server connections, reset
            assert c.execute("SELECT pg_backend_pid()").fetchone()[0] in used
            assert c.execute("SHOW search_path").fetchone()[0] == '"$user", public'
    finally:
        bouncer.stop()


def test_clients_past_the_budget_wait_their_turn_instead_of_being_refused(test_database_url, tmp_path):
    """30 short-lived clients at once (workers and commands connect per task) over 3 server connections."""
    name = f"prumo-burst-{uuid.uuid4().hex[:8]}"
    bouncer = start_pgbouncer(database_url=test_database_url, workdir=tmp_path,
                              settings={"default_pool_size": "3", "max_db_connections": "3"})
    stop, peaks = threading.Event(), []
    sampler = threading.Thread(target=peak_connections, args=(connection.settings_dict["NAME"], name, stop, peaks),
                               daemon=True)
    sampler.start()

    def one(_: int) -> int:
        with psycopg.connect(bouncer.url, autocommit=True, application_name=name) as conn:
            return conn.execute("SELECT 1 FROM pg_sleep(0.05)").fetchone()[0]

    try:
        with ThreadPoolExecutor(30) as pool:
            assert list(pool.map(one, range(30))) == [1] * 30
        stop.set()
        sampler.join()
        assert 1 <= max(peaks) <= 3, f"server connections: peak {max(peaks)}"
    finally:
        stop.set()
        bouncer.stop()


def test_the_stack_through_pgbouncer_keeps_every_organization_in_its_schema(
        twin_threads, tenant_world, test_database_url, redis_url, tmp_path, django_db_blocker):  # noqa: F811
    """Two web workers (a pool of POOL each) and a generation worker (a pool of POOL) through one PgBouncer whose
    budget is exactly their pools: every organization reads and writes only its schema, an answer completes."""
    orgs, ids = twin_threads
    name = f"prumo-pgb-{uuid.uuid4().hex[:8]}"
    budget = 3 * POOL
    bouncer = start_pgbouncer(database_url=test_database_url, workdir=tmp_path,
                              settings={"default_pool_size": str(budget), "max_db_connections": str(budget)})
    pools = {"DB_POOL_MAX_SIZE": str(POOL), "DB_POOL_TIMEOUT": "30"}
    queue = f"generation-{uuid.uuid4().hex[:8]}"  # this worker's, not the session worker's
    server = start_live_server(database_url=bouncer.url, redis_url=redis_url, workdir=tmp_path / "web",
                               env_extra={**pools, "WEB_CONCURRENCY": "2", "GENERATION_QUEUE": queue,
                                          "DB_APPLICATION_NAME": f"{name}-web"})
    worker = start_celery_worker(database_url=bouncer.url, redis_url=redis_url, workdir=tmp_path / "worker",
                                 email_dir=tmp_path, queues=queue,
                                 env_extra={**pools, "PRUMO_PROCESS": "generator", "CHAT_DEMO_DELAY": "0",
                                            "GENERATION_QUEUE": queue,
                                            "DB_APPLICATION_NAME": f"{name}-generator"})
    stop, peaks = threading.Event(), []
    sampler = threading.Thread(target=peak_connections, args=(connection.settings_dict["NAME"], f"{name}-%", stop,
                                                               peaks), daemon=True)
    try:
        sessions = {key: sign_in(server.url, f"owner-{key}@example.com") for key in orgs}
        sampler.start()
        problems = twins_exercise(server.url, orgs, ids, sessions)
        assert problems == []
        with django_db_blocker.unblock():
            twins_check(orgs, ids)
        # A question in each organization, answered by the generation worker through PgBouncer.
        for key, org in orgs.items():
            cookies, token = sessions[key]
            sent = httpx.post(f"{server.url}/o/{org.slug}/chat/t/{ids[0]}/send/", data={"content": "Hello?"},
                              cookies=cookies, headers={"X-CSRFToken": token, "Referer": server.url}, timeout=30)
            assert sent.status_code in (200, 302), sent.text[:500]
        deadline = time.monotonic() + ANSWER_TIMEOUT
        answers = {}
        while time.monotonic() < deadline:
            with django_db_blocker.unblock():
                for key, org in orgs.items():
                    with schema_context(org.schema_name):
                        answers[key] = Message.objects.filter(thread_id=ids[0], role="assistant").latest("id")
            if all(not answer.is_active for answer in answers.values()):
                break
            time.sleep(0.2)
        assert {key: answer.status for key, answer in answers.items()} == {"a": "complete", "b": "complete"}, \
            worker.process.log()[-5000:]
        stop.set()
        sampler.join()
        assert 1 <= max(peaks) <= budget, f"server connections: peak {max(peaks)}"
        for process in (server.process, worker.process):
            assert "Traceback" not in process.log(), process.log()[-5000:]
            assert "does not exist" not in process.log()
    finally:
        stop.set()
        server.process.stop()
        worker.process.stop()
        bouncer.stop()
