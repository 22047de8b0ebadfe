"""Logs that follow the work: a task queued by a request logs that request's id, organization and person; /readyz
checks the Celery broker and, when asked to, that a worker answers."""

from __future__ import annotations

import re
import time
import uuid

import httpx
import pytest
from django.test import Client

from .test_chat_streaming import csrf_token, sign_in

DEMO = "demo/prumo-demo"


def test_a_task_logs_the_id_of_the_request_that_queued_it(live_server_process, celery_worker_process,
                                                          tenant_world):
    base = live_server_process.url
    owner = tenant_world["a"]["owner"]
    request_id = f"tests-{uuid.uuid4().hex}"
    with httpx.Client(base_url=base, cookies=sign_in(base, "owner-a@example.com"), timeout=10) as client:
        home = "/o/org-a/chat/"
        sent = client.post("/o/org-a/chat/new/", data={"csrfmiddlewaretoken": csrf_token(client, home),
                                                       "content": f"Whose task? {request_id}", "model": DEMO},
                           headers={"Referer": f"{base}{home}", "X-Request-ID": request_id})
    assert sent.status_code == 302, sent.text[:1000]
    assert sent.headers["X-Request-ID"] == request_id

    line = re.compile(rf"\[req={request_id} org=org-a user={owner.pk}\] Task chat\.tasks\.generation_run\[")
    deadline = time.monotonic() + 30
    while not line.search(log := celery_worker_process.process.log()):
        assert time.monotonic() < deadline, f"no worker line carries req={request_id}:\n{log[-4000:]}"
        time.sleep(0.2)


@pytest.mark.django_db
def test_readyz_wants_a_worker_only_when_told(settings, celery_worker_process):
    settings.READYZ_REQUIRE_WORKER = False
    assert "worker" not in Client().get("/readyz").json()["checks"]
    settings.READYZ_REQUIRE_WORKER = True
    response = Client().get("/readyz")
    assert response.status_code == 200, response.json()
    assert response.json()["checks"] == {"database": "ok", "redis": "ok", "broker": "ok", "worker": "ok"}


@pytest.fixture
def unreachable_broker(monkeypatch):
    """The Celery app's broker where nothing listens, its connection pools dropped before and after."""
    from config import views
    from config.celery import app

    def pools_drop():
        app._pool = None
        app.amqp._producer_pool = None

    monkeypatch.setattr(views, "_worker_answered_at", 0.0)
    monkeypatch.setattr(app.conf, "broker_url", "redis://127.0.0.1:1/0")
    pools_drop()
    yield
    monkeypatch.undo()
    pools_drop()


@pytest.mark.django_db
def test_readyz_names_an_unreachable_broker_and_no_worker(settings, unreachable_broker):
    settings.READYZ_REQUIRE_WORKER = True
    response = Client().get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["broker", "worker"], body
    assert body["checks"]["database"] == body["checks"]["redis"] == "ok"
