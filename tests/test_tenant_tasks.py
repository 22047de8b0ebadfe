"""Tasks never run in the wrong schema (issue 12, item 4).

tenant-schemas-celery switches to the caller's schema in a `task_prerun` signal handler, and Celery
only logs a handler's error: a task whose switch failed used to run in `public`. Under load
(PostgreSQL refusing connections) 29 generation tasks did ("relation chat_message does not
exist"), and their answers stayed pending. `config.celery_tasks.SchemaCheckedTask` refuses to run a
task outside its schema: eagerly it raises, in a worker it retries.
"""

from __future__ import annotations

import re
import socket
import threading
import time
import uuid

import pytest
from django.db import connection
from django_tenants.utils import schema_context

from billing.models import CreditEntry
from chat.models import Message, Thread
from config.celery import app
from config.celery_tasks import SchemaSwitchFailed

from .servers import postgres_address, postgres_url_at, start_celery_worker
from .test_chat_streaming import threads_remove

DEMO = "demo/prumo-demo"
WORKER_TIMEOUT = 60.0


def pending_answer(client_for, org, django_capture_on_commit_callbacks) -> Message:
    """A question in a new thread of `org` whose generation task was never queued."""
    with django_capture_on_commit_callbacks(execute=False):
        response = client_for("a").post(f"/o/{org.slug}/chat/new/", {"model": DEMO, "content": "Hello?"})
    assert response.status_code == 302, response.content[:500]
    with schema_context(org.schema_name):
        return Thread.objects.latest("id").messages.get(role="assistant")


def test_a_task_whose_schema_cannot_be_set_raises_and_writes_nothing(
        client_for, org_a, django_capture_on_commit_callbacks):
    from chat.tasks import thread_title

    answer = pending_answer(client_for, org_a, django_capture_on_commit_callbacks)
    thread_id = answer.thread_id
    try:
        # An organization deleted after the task was queued: the switch finds no tenant.
        with pytest.raises(SchemaSwitchFailed, match="org_gone"):
            thread_title.apply_async(args=[thread_id], headers={"_schema_name": "org_gone"})
        assert connection.schema_name == "public"
        with schema_context(org_a.schema_name):
            assert Thread.objects.get(pk=thread_id).title == ""  # the task body never ran
        # In its own schema the same task runs.
        thread_title.apply_async(args=[thread_id], headers={"_schema_name": org_a.schema_name})
        with schema_context(org_a.schema_name):
            assert Thread.objects.get(pk=thread_id).title == "Hello?"
    finally:
        threads_remove(org_a, [thread_id])


class Gate:
    """A TCP proxy in front of PostgreSQL that refuses the next `refuse(n)` connections it is asked for,
    as a server with no free connection does, then forwards again. `.url` is `database_url` through it."""

    def __init__(self, database_url: str) -> None:
        host, port = postgres_address(database_url)
        self.target = (socket.AF_UNIX, f"{host}/.s.PGSQL.{port}") if host.startswith("/") \
            else (socket.AF_INET, (host, port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = postgres_url_at(database_url, self.port)
        self.to_refuse = 0
        self.refused = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def refuse(self, count: int) -> None:
        with self.lock:
            self.to_refuse = count

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _address = self.listener.accept()
            except OSError:
                return
            with self.lock:
                refuse = self.to_refuse > 0
                if refuse:
                    self.to_refuse -= 1
                    self.refused += 1
            if refuse:
                client.close()
                continue
            family, address = self.target
            upstream = socket.socket(family, socket.SOCK_STREAM)
            upstream.connect(address)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.mark.slow
def test_a_worker_retries_a_task_whose_schema_switch_failed_and_never_runs_it_in_public(
        tenant_world, test_database_url, redis_url, tmp_path, django_db_blocker, monkeypatch):
    from chat.tasks import generation_run

    gate = Gate(test_database_url)
    queue = f"schema-{uuid.uuid4().hex[:8]}"  # only this worker takes the task
    worker = start_celery_worker(database_url=gate.url, redis_url=redis_url, workdir=tmp_path, email_dir=tmp_path,
                                 queues=queue, env_extra={"CHAT_DEMO_DELAY": "0"})
    org_a = tenant_world["a"]["org"]
    with django_db_blocker.unblock(), schema_context(org_a.schema_name):  # committed: the worker reads it
        thread = Thread.objects.create(user=tenant_world["a"]["owner"], model_id=DEMO, title="schema test")
        Message.objects.create(thread=thread, role=Message.Role.USER, content="Hello?")
        answer = Message.objects.create(thread=thread, role=Message.Role.ASSISTANT, status=Message.Status.PENDING,
                                        model_id=DEMO, max_tokens=200)
    try:
        # The worker's next connection, the one the schema switch opens, is refused; later ones work.
        gate.refuse(1)
        monkeypatch.setitem(app.conf, "task_always_eager", False)
        generation_run.apply_async(args=[answer.pk], headers={"_schema_name": org_a.schema_name}, queue=queue)
        deadline = time.monotonic() + WORKER_TIMEOUT
        while True:
            with django_db_blocker.unblock(), schema_context(org_a.schema_name):
                answer.refresh_from_db()
            if not answer.is_active or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        log = worker.process.log()
        assert answer.status == "complete", f"still {answer.status}; worker log:\n{log[-5000:]}"
        assert gate.refused == 1
        # The first attempt stopped before the task's body: a retry, not a run in public.
        refusal = rf"needs schema '{re.escape(org_a.schema_name)}' but the connection is in 'public'.*attempt 1 of"
        assert re.search(refusal, log), log[-5000:]
        assert "does not exist" not in log
        assert len(re.findall(r"chat\.tasks\.generation_run\[[-0-9a-f]+\] retry", log)) == 1
        with django_db_blocker.unblock():
            entries = CreditEntry.objects.filter(idempotency_key__startswith=f"chat:{org_a.schema_name}:{answer.pk}:")
            kinds = list(entries.order_by("id").values_list("kind", flat=True))
        assert kinds in ([], ["reserve", "settle"])  # settled once (the demo model costs nothing: no hold)
    finally:
        worker.process.stop()
        gate.close()
        with django_db_blocker.unblock():
            threads_remove(org_a, [answer.thread_id])
