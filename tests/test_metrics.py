"""/metrics: Prometheus text from every process of the production-style server (two gunicorn workers) and a Celery
worker sharing one multiprocess directory, after real traffic: a chat answer from the demo model, a /v1 call
(fake OpenAI upstream), a CNPJ check (fake registries) and the Celery tasks behind them.

The same traffic runs for two organizations, one after the other: no label may name an organization, a
person or a key, and the second organization must add no series (label values never grow with tenants).
"""

from __future__ import annotations

import re
import time
import uuid

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tenants.api_keys import api_key_create
from tenants.audit.services import Actor

from .fake_llm import Answer, FakeOpenAI
from .fake_registries import PROVIDERS, FakeRegistries
from .orgs import organization_drop
from .security.inprocess_v1 import starter_organization
from .servers import free_port, start_celery_worker, start_live_server
from .test_chat_streaming import csrf_token, sign_in
from .test_observability import assert_queries_match, exported_samples

TOKEN = "metrics-token-for-tests"
QUEUES = f"metrics-{uuid.uuid4().hex[:8]}"
CNPJ = "19.131.243/0001-97"
DEMO = "demo/prumo-demo"
CHEAP = "openai/gpt-4.1-mini"
FORBIDDEN_LABELS = re.compile(r"org|organi[sz]ation|tenant|schema|user|email|key|cnpj|slug|person|member|account",
                              re.IGNORECASE)
FAMILIES = {
    "prumo_http_requests", "prumo_http_request_duration_seconds", "prumo_chat_streams_open",
    "prumo_chat_answers", "prumo_credits", "prumo_credit_holds_open", "prumo_credit_holds_oldest_seconds",
    "prumo_ratelimit_rejections",
    "prumo_celery_tasks", "prumo_celery_task_duration_seconds", "prumo_celery_queue_length",
    "prumo_db_pool_connections", "prumo_gateway_requests", "prumo_gateway_ttft_seconds",
    "prumo_gateway_overhead_seconds", "prumo_llm_tokens", "prumo_circuit_open", "prumo_registry_requests",
    "prumo_checks_cache",
}


@pytest.fixture(scope="module")
def upstream():
    fake = FakeOpenAI(Answer(["Metered", " answer"], input_tokens=10, output_tokens=2)).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def registries():
    with FakeRegistries() as server:
        yield server


@pytest.fixture(scope="module")
def stack(upstream, registries, test_database_url, redis_url, tmp_path_factory):
    """Web server (two workers) and Celery worker writing their samples to one directory."""
    samples = tmp_path_factory.mktemp("prometheus")
    # Queues of its own: the session's other worker (same broker) must not take the tasks this one counts.
    env = {"GENERATION_QUEUE": f"{QUEUES}-generation", "CHECKS_QUEUE": f"{QUEUES}-checks",
           "PROMETHEUS_MULTIPROC_DIR": str(samples), "METRICS_TOKEN": TOKEN, "WEB_CONCURRENCY": "2",
           "OPENAI_BASE_URL": upstream.url, "OPENAI_API_KEY": "sk-upstream", "LLM_READ_TIMEOUT": "3",
           "API_UNAUTHENTICATED_PER_MINUTE": "2", "CHECKS_REDIS_PREFIX": f"checks-metrics-{uuid.uuid4().hex[:8]}",
           "CHECKS_CONNECT_TIMEOUT": "0.5", "CHECKS_READ_TIMEOUT": "2",
           **registries.settings(), **{f"{provider.upper()}_RATE_LIMIT": "" for provider in PROVIDERS}}
    workdir = tmp_path_factory.mktemp("metrics")
    server = start_live_server(database_url=test_database_url, redis_url=redis_url, workdir=workdir, env_extra=env)
    worker_port = free_port()  # the worker's own /metrics (as in compose, where it has a directory of its own)
    worker = start_celery_worker(database_url=test_database_url, redis_url=redis_url, workdir=workdir,
                                 email_dir=server.email_dir, site_url=server.url,
                                 env_extra={**env, "METRICS_WORKER_PORT": str(worker_port)},
                                 queues=f"{QUEUES}-generation,{QUEUES}-checks")
    yield server, worker, f"http://127.0.0.1:{worker_port}"
    worker.process.stop()
    server.process.stop()


@pytest.fixture(scope="module")
def two_orgs(tenant_world, django_db_blocker):
    """Two committed organizations of owner-a on Starter with credits, each with a chat+checks key."""
    owner = tenant_world["a"]["owner"]
    with django_db_blocker.unblock():
        made = []
        for name in ("Metrics One", "Metrics Two"):
            org = starter_organization(owner, credits="1000", name=name)
            key = api_key_create(organization=org, name="metrics", scopes=["chat", "checks"], actor=Actor.system())
            made.append((org, key.raw))
    yield made
    with django_db_blocker.unblock():
        for org, _key in made:
            organization_drop(org)


def scrape(base: str, **headers) -> httpx.Response:
    return httpx.get(f"{base}/metrics", headers=headers, timeout=10)


def families(base: str) -> dict[str, list]:
    """Family name -> its samples, as prometheus-client's parser reads the scrape."""
    response = scrape(base, Authorization=f"Bearer {TOKEN}")
    assert response.status_code == 200, response.text[:500]
    assert response.headers["content-type"].startswith("text/plain")
    return {family.name: family.samples for family in text_string_to_metric_families(response.text)}


def value(found: dict, family: str, sample: str | None = None, **labels) -> float:
    """The sum of `family`'s samples named `sample` (default: the family's counter/gauge sample) matching `labels`."""
    names = {sample} if sample else {family, f"{family}_total"}
    return sum(s.value for s in found.get(family, []) if s.name in names
               and all(s.labels.get(name) == wanted for name, wanted in labels.items()))


def series(found: dict) -> set[tuple]:
    return {(s.name, tuple(sorted(s.labels.items()))) for samples in found.values() for s in samples}


def wait_until(condition, timeout: float = 40.0, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(interval)
    return result


def chat_once(base: str, cookies: httpx.Cookies, slug: str) -> dict:
    """Ask the demo model through the chat page; watch its stream open, then let it finish."""
    with httpx.Client(base_url=base, cookies=cookies, timeout=httpx.Timeout(10, read=30)) as client:
        home = f"/o/{slug}/chat/"
        token = csrf_token(client, home)
        sent = client.post(f"/o/{slug}/chat/new/", headers={"Referer": f"{base}{home}"},
                           data={"csrfmiddlewaretoken": token, "content": f"Metrics? {uuid.uuid4().hex[:6]}",
                                 "model": DEMO})
        assert sent.status_code == 302, sent.text[:1000]
        thread = client.get(sent.headers["location"])
        events = re.search(r'data-stream-url="([^"]+)"', thread.text) or re.search(
            r'"(/o/[^"]+/chat/m/\d+/events/[^"]*)"', thread.text)
        assert events, "no stream URL on the thread page"
        url = events.group(1).replace("&amp;", "&")
        with client.stream("GET", url) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            wait_until(lambda: next(lines).startswith("data:"))
            during = families(base)  # the answer is streaming: its stream is open
            for line in lines:
                if line.startswith("event: end"):
                    break
    return during


def v1_once(base: str, key: str) -> None:
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=20)
    completion = client.chat.completions.create(model=CHEAP, messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content == "Metered answer"


def check_once(base: str, key: str) -> None:
    auth = {"Authorization": f"Bearer {key}"}
    queued = httpx.post(f"{base}/api/v1/checks/", json={"cnpj": CNPJ}, headers=auth, timeout=10)
    assert queued.status_code in (200, 201, 202), queued.text[:1000]
    url = queued.json()["status_url"]
    wait_until(lambda: httpx.get(url, headers=auth, timeout=10).json()["status"] == "succeeded")


def test_metrics_follow_chat_v1_checks_and_tasks_without_tenant_labels(stack, two_orgs):
    server, _worker, worker_metrics = stack
    base = server.url
    assert scrape(base).status_code == 404  # a token is configured: without it, nothing is there
    assert scrape(base, Authorization="Bearer wrong").status_code == 404
    assert families(base)["prumo_celery_queue_length"]  # the scrape-time gauges answer before any traffic

    cookies = sign_in(base, "owner-a@example.com")
    # The first lookup of the CNPJ queues a task; afterwards every organization's check is answered from the
    # shared cache: so both rounds below see the same answers.
    check_once(base, two_orgs[0][1])
    rounds = []
    streaming = []
    for org, key in two_orgs:
        streaming.append(chat_once(base, cookies, org.slug))
        v1_once(base, key)
        check_once(base, key)
        wait_until(lambda: value(families(base), "prumo_celery_tasks", task="chat.tasks.generation_run",
                                 state="succeeded") >= len(rounds) + 1)
        rounds.append(families(base))
    first, second = rounds

    # The per-address limit on calls without a valid key (2 a minute here) refuses the third.
    bad = openai.OpenAI(base_url=f"{base}/v1", api_key="sk-not-a-key", max_retries=0, timeout=10)
    statuses = []
    for _ in range(3):
        try:
            bad.models.list()
        except openai.APIStatusError as error:
            statuses.append(error.status_code)
    assert statuses[-1] == 429, statuses
    final = families(base)

    assert FAMILIES <= set(second), FAMILIES - set(second)
    assert value(streaming[0], "prumo_chat_streams_open") >= 1
    assert value(second, "prumo_http_requests", route="chat_thread_new", method="POST", status="302") >= 2
    assert value(second, "prumo_http_requests", route="unmatched") >= 0
    assert value(second, "prumo_http_request_duration_seconds", "prumo_http_request_duration_seconds_count",
                 route="chat_thread_new", method="POST") >= 2
    assert value(second, "prumo_chat_answers", status="complete") >= 2
    assert value(second, "prumo_credits", kind="held") > value(first, "prumo_credits", kind="held") > 0
    assert value(second, "prumo_credits", kind="settled") > value(first, "prumo_credits", kind="settled") > 0
    assert value(final, "prumo_ratelimit_rejections", layer="ip") > value(second, "prumo_ratelimit_rejections",
                                                                          layer="ip")
    assert value(second, "prumo_credit_holds_open") >= 0
    assert value(second, "prumo_credit_holds_oldest_seconds") >= 0
    assert value(second, "prumo_celery_tasks", task="checks.tasks.check_run_task", state="succeeded") >= 1
    assert value(second, "prumo_celery_task_duration_seconds", "prumo_celery_task_duration_seconds_count",
                 task="chat.tasks.generation_run") >= 2
    assert {s.labels["queue"] for s in second["prumo_celery_queue_length"]} >= {
        "default", f"{QUEUES}-checks", f"{QUEUES}-generation"}
    assert value(second, "prumo_gateway_requests", provider="openai", model=CHEAP, status="200") == 2
    assert value(second, "prumo_gateway_ttft_seconds", "prumo_gateway_ttft_seconds_count", provider="openai") == 2
    assert value(second, "prumo_gateway_overhead_seconds", "prumo_gateway_overhead_seconds_count") == 2
    assert value(second, "prumo_llm_tokens", provider="openai", direction="input") == 20  # the fake's 10 a call
    assert value(second, "prumo_llm_tokens", provider="openai", direction="output") == 4
    assert value(second, "prumo_registry_requests", registry="brasilapi", outcome="found") == 1  # then cached
    assert value(second, "prumo_checks_cache", result="miss") == 1
    assert value(second, "prumo_checks_cache", result="hit") >= 2
    breakers = {s.labels["provider"]: s.value for s in second["prumo_circuit_open"]}
    assert breakers["openai"] == breakers["brasilapi"] == 0, breakers
    pools = {s.labels["pool"] for s in second["prumo_db_pool_connections"]}
    assert {"async"} <= pools, pools

    # No label names a tenant, a person or a key; no value is one of theirs.
    tenant_values = {str(part) for org, key in two_orgs for part in (org.pk, org.slug, org.schema_name, org.name,
                                                                      key[:12])}
    for name, samples in second.items():
        for sample in samples:
            assert not [label for label in sample.labels if FORBIDDEN_LABELS.search(label)], (name, sample.labels)
            assert not tenant_values & set(sample.labels.values()), (name, sample.labels)
    # The second organization's traffic, the same as the first's, adds no series.
    assert series(second) - series(first) == set()

    # The Grafana dashboard and the alert rules (docs/observability) query only what the scrape exports, by labels
    # it has.
    assert_queries_match(exported_samples(final))

    # The worker's own /metrics: the samples of the processes writing to its directory (here the web server's too),
    # without the scrape-time gauges (the web server's /metrics has them, once); same rule for who may scrape.
    assert scrape(worker_metrics).status_code == 404
    assert scrape(worker_metrics, Authorization="Bearer wrong").status_code == 404
    from_worker = families(worker_metrics)
    assert value(from_worker, "prumo_celery_tasks", task="chat.tasks.generation_run", state="succeeded") >= 2
    assert "prumo_celery_queue_length" not in from_worker and "prumo_credit_holds_open" not in from_worker
    assert httpx.get(f"{worker_metrics}/other", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404


# ---------------------------------------------------------------- who may scrape (in-process)


@pytest.mark.django_db
def test_without_a_token_only_this_machine_scrapes(settings):
    from django.test import Client

    settings.METRICS_TOKEN = ""
    local = Client().get("/metrics")  # the test client's REMOTE_ADDR is 127.0.0.1
    assert local.status_code == 200
    assert "prumo_http_requests_total" in local.content.decode()
    assert Client(REMOTE_ADDR="10.0.0.7").get("/metrics").status_code == 404
    assert Client().get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 404


@pytest.mark.django_db
def test_with_a_token_only_its_bearer_scrapes(settings):
    from django.test import Client

    settings.METRICS_TOKEN = "s3cret"
    assert Client().get("/metrics").status_code == 404  # loopback is not enough once a token is set
    assert Client().get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 404
    allowed = Client(REMOTE_ADDR="10.0.0.7").get("/metrics", headers={"Authorization": "Bearer s3cret"})
    assert allowed.status_code == 200
    assert allowed["Content-Type"].startswith("text/plain")
