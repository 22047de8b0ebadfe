"""Pooled database connections (issue 12, item 1).

The web process and the generation worker take their connections from a bounded pool (Django's psycopg
pool, config/settings/base.py). A pooled connection goes from one organization's request to another's,
and django-tenants keeps the schema in the connection's `search_path`: these tests prove, through the
real server, that every request reads and writes only its own schema, that the process never holds more
connections than its pool, and that a request that cannot get one is told to retry (503), never a 500.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
import uuid

import httpx
import pytest
from django.db import connection
from django_tenants.utils import schema_context

from chat.models import Thread
from config.processes import process_role

from . import test_browser as harness
from .servers import ROOT, in_thread, start_live_server
from .test_browser_chat import sign_in as browser_sign_in
from .test_chat_streaming import CSRF_INPUT, PASSWORD, threads_remove

POOL = 4
THREADS = 6  # per organization, with the same ids in both schemas
FIRST_ID = 990_001
ROUNDS = 8


def test_each_kind_of_process_gets_its_pool_and_its_name(settings):
    assert process_role(["/venv/bin/gunicorn", "config.asgi:application"]) == "web"
    assert process_role(["/venv/lib/celery/__main__.py", "-A", "config", "worker", "-Q", "generation",
                         "--pool", "threads"]) == "generator"
    assert process_role(["celery", "-A", "config", "worker", "-Q", "default,checks,webhooks,billing"]) == "worker"
    assert process_role(["celery", "-A", "config", "beat"]) == "beat"
    assert process_role(["manage.py", "deploy_migrate"]) == "manage"
    script = ("import django, json; django.setup(); from django.conf import settings as s; "
              "d = s.DATABASES['default']; print(json.dumps([d['OPTIONS'].get('application_name'), "
              "d['OPTIONS'].get('pool', {}).get('max_size', 0), d['CONN_MAX_AGE']]))")
    seen = {}
    for case, role, extra in (("web", "web", {}), ("generator", "generator", {}), ("worker", "worker", {}),
                              ("beat", "beat", {}), ("manage", "manage", {}),
                              ("named", "web", {"DB_APPLICATION_NAME": "prumo-web-eu"})):
        env = {"PRUMO_PROCESS": role, "DJANGO_SETTINGS_MODULE": "config.settings.test", "PATH": "/usr/bin:/bin",
               **extra}
        out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                             check=True).stdout
        seen[case] = out.strip()
    assert seen == {"web": '["prumo-web", 20, 0]', "generator": '["prumo-generator", 8, 0]',
                    "worker": '["prumo-worker", 0, 0]', "beat": '["prumo-beat", 0, 0]',
                    "manage": '["prumo-manage", 0, 0]', "named": '["prumo-web-eu", 20, 0]'}
    # One web worker and one generator, with the web worker's async pool (/v1, composer sends): within 40.
    assert settings.DB_POOL_DEFAULTS["web"] + settings.DB_POOL_DEFAULTS["generator"] + settings.ASYNC_DB_POOL_SIZE <= 40


@pytest.fixture
def twin_threads(tenant_world, django_db_blocker):
    """THREADS threads of owner-a in org-a and of owner-b in org-b with the same ids, plus decoys: in each
    schema, threads with the other owner and those same ids. A request that ran in the wrong schema would
    rename a decoy (or read it); committed, removed afterwards."""
    orgs = {key: tenant_world[key]["org"] for key in ("a", "b")}
    ids = list(range(FIRST_ID, FIRST_ID + THREADS))
    with django_db_blocker.unblock():
        for key, other in (("a", "b"), ("b", "a")):
            with schema_context(orgs[key].schema_name):
                Thread.objects.filter(pk__gte=FIRST_ID).delete()
                for pk in ids:
                    Thread.objects.create(pk=pk, user=tenant_world[key]["owner"], model_id="demo/prumo-demo",
                                          title=f"{key}-start", title_is_auto=False)
                    Thread.objects.create(pk=pk + THREADS, user=tenant_world[other]["owner"],
                                          model_id="demo/prumo-demo", title="decoy", title_is_auto=False)
    yield orgs, ids
    with django_db_blocker.unblock():
        for org in orgs.values():
            with schema_context(org.schema_name):
                Thread.objects.filter(pk__gte=FIRST_ID).delete()


def sign_in(base: str, email: str) -> tuple[httpx.Cookies, str]:
    with httpx.Client(base_url=base, timeout=10) as client:
        page = client.get("/accounts/login/")
        token = CSRF_INPUT.search(page.text).group(1)
        response = client.post("/accounts/login/", data={"csrfmiddlewaretoken": token, "login": email,
                                                         "password": PASSWORD},
                               headers={"Referer": f"{base}/accounts/login/"})
        assert response.status_code == 302, response.text[:1000]
        return httpx.Cookies(client.cookies), client.cookies["csrftoken"]


def peak_connections(database: str, name: str, stop: threading.Event, peaks: list[int]) -> None:
    """Sample pg_stat_activity for connections whose name is LIKE `name` until `stop`."""
    import psycopg

    params = connection.get_connection_params()
    with psycopg.connect(host=params.get("host", "127.0.0.1"), port=params.get("port", 5432),
                         user=params.get("user"), dbname=database, autocommit=True) as conn:
        while not stop.is_set():
            count = conn.execute("SELECT count(*) FROM pg_stat_activity "
                                 "WHERE datname = %s AND application_name LIKE %s", (database, name)).fetchone()[0]
            peaks.append(count)
            time.sleep(0.01)


def twins_exercise(base: str, orgs: dict, ids: list[int], sessions: dict) -> list[str]:
    """Every twin thread renamed and read ROUNDS times, all at once, by its organization's owner: what went wrong."""

    async def member(key: str, pk: int, problems: list[str]) -> None:
        cookies, token = sessions[key]
        slug = orgs[key].slug
        async with httpx.AsyncClient(base_url=base, cookies=cookies, timeout=60,
                                     headers={"X-CSRFToken": token, "Referer": base}) as client:
            for round_ in range(ROUNDS):
                title = f"{key}-{pk}-{round_}"
                renamed = await client.post(f"/o/{slug}/chat/t/{pk}/rename/", data={"title": title})
                page = await client.get(f"/o/{slug}/chat/t/{pk}/")
                if renamed.status_code != 302 or page.status_code != 200 or f"<title>{title}" not in page.text:
                    problems.append(f"{key} {pk} round {round_}: {renamed.status_code} {page.status_code}")

    async def everyone() -> list[str]:
        problems: list[str] = []
        await asyncio.gather(*(member(key, pk, problems) for key in orgs for pk in ids))
        return problems

    return asyncio.run(everyone())


def twins_check(orgs: dict, ids: list[int]) -> None:
    """Each organization's threads carry its own last titles; no decoy was touched."""
    for key, org in orgs.items():
        with schema_context(org.schema_name):
            titles = dict(Thread.objects.filter(pk__gte=FIRST_ID).values_list("pk", "title"))
        assert titles == {**{pk: f"{key}-{pk}-{ROUNDS - 1}" for pk in ids}, **{pk + THREADS: "decoy" for pk in ids}}


@pytest.mark.slow
def test_two_organizations_at_once_through_the_pool_each_touch_only_their_schema(
        twin_threads, test_database_url, redis_url, tmp_path, django_db_blocker):
    orgs, ids = twin_threads
    name = f"prumo-web-{uuid.uuid4().hex[:8]}"  # apart from the session's other web servers
    server = start_live_server(database_url=test_database_url, redis_url=redis_url, workdir=tmp_path,
                               env_extra={"DB_POOL_MAX_SIZE": str(POOL), "DB_POOL_TIMEOUT": "30",
                                          "DB_APPLICATION_NAME": name})
    stop, peaks = threading.Event(), []
    database = connection.settings_dict["NAME"]
    sampler = threading.Thread(target=peak_connections, args=(database, name, stop, peaks), daemon=True)
    try:
        sessions = {key: sign_in(server.url, f"owner-{key}@example.com") for key in orgs}
        sampler.start()
        problems = twins_exercise(server.url, orgs, ids, sessions)
        stop.set()
        sampler.join()
        assert problems == []
        with django_db_blocker.unblock():
            twins_check(orgs, ids)
        assert 1 <= max(peaks) <= POOL, f"connections named {name}: peak {max(peaks)}"
        assert "Traceback" not in server.process.log()
    finally:
        stop.set()
        server.process.stop()


@pytest.mark.slow
def test_a_request_that_gets_no_connection_in_time_is_told_to_retry_never_a_500(
        tenant_world, test_database_url, redis_url, tmp_path):
    server = start_live_server(database_url=test_database_url, redis_url=redis_url, workdir=tmp_path,
                               env_extra={"DB_POOL_MAX_SIZE": "1", "DB_POOL_MIN_SIZE": "1", "DB_POOL_TIMEOUT": "0.05"})
    try:
        cookies, _token = sign_in(server.url, "owner-a@example.com")
        slug = tenant_world["a"]["org"].slug

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, cookies=cookies, timeout=60,
                                         limits=httpx.Limits(max_connections=100)) as client:
                pages = [client.get(f"/o/{slug}/chat/") for _ in range(60)]
                api = [client.get("/api/v1/threads/", headers={"X-Organization": slug}) for _ in range(20)]
                return await asyncio.gather(*pages, *api)

        responses = asyncio.run(burst())
        statuses = [response.status_code for response in responses]
        assert 500 not in statuses
        assert set(statuses) <= {200, 503}
        refused = [response for response in responses if response.status_code == 503]
        assert refused, "one connection for 80 requests at once: some must have waited past 50 ms"
        assert all(response.headers["Retry-After"] == "5" for response in refused)
        pages = [r for r in refused if not r.url.path.startswith("/api/")]
        api = [r for r in refused if r.url.path.startswith("/api/")]
        assert all("Prumo is busy" in r.text and 'http-equiv="refresh"' in r.text for r in pages)
        assert all(r.json()["code"] == "overloaded" for r in api)
        assert not re.search(r"Internal Server Error", server.process.log())
    finally:
        server.process.stop()


# ---------------------------------------------------------------- the page retries by itself (browser)

browser = harness.browser  # one Chromium for what follows in this module (Playwright: keep it last)


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize("where", ["thread", "new conversation"])
def test_a_send_refused_for_want_of_a_connection_says_so_and_goes_through_by_itself(
        where, browser, tenant_world, test_database_url, redis_url, tmp_path, django_db_blocker):
    """The server's only pooled connection is held by another send, blocked on a row lock the test holds:
    the page's send gets 503, the composer says Prumo is busy and sends again after Retry-After, and once
    the lock is gone the question is in the thread, once. In a thread the composer sends on the async pool
    (chat.send_direct), so the other send is one of those; the first question of a new conversation goes
    through Django's pool (it used to be a plain form post: the busy page, then an empty composer)."""
    import psycopg
    from playwright.sync_api import expect

    from chat.models import Message

    org = tenant_world["a"]["org"]
    owner = tenant_world["a"]["owner"]

    def threads_make():
        with schema_context(org.schema_name):
            return [Thread.objects.create(user=owner, model_id="demo/prumo-demo", title=title, title_is_auto=False).pk
                    for title in ("held", "page")]

    with django_db_blocker.unblock():
        held, page_thread = in_thread(threads_make)
    server = start_live_server(database_url=test_database_url, redis_url=redis_url, workdir=tmp_path,
                               env_extra={"DB_POOL_MAX_SIZE": "1", "DB_POOL_TIMEOUT": "1", "OVERLOAD_RETRY_AFTER": "1",
                                          "ASYNC_DB_POOL_SIZE": "1", "CHAT_SEND_WAIT_SECONDS": "1"})
    blocker, before = None, [held, page_thread]
    try:
        context = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 900})
        context.set_default_timeout(harness.TIMEOUT_MS)
        page = context.new_page()
        browser_sign_in(page)
        page.goto(f"/o/{org.slug}/chat/t/{page_thread}/" if where == "thread" else f"/o/{org.slug}/chat/")
        with django_db_blocker.unblock():
            before = in_thread(lambda: owner_threads(org, owner))

        params = connection.get_connection_params()
        lock = psycopg.connect(host=params.get("host", "127.0.0.1"), port=params.get("port", 5432),
                               user=params.get("user"), dbname=connection.settings_dict["NAME"])
        lock.execute(f'SELECT 1 FROM "{org.schema_name}".chat_thread WHERE id = %s FOR UPDATE', (held,))
        cookies, token = in_thread(lambda: sign_in(server.url, owner.email))

        form, headers = {"content": "first"}, {"X-CSRFToken": token, "Referer": server.url}
        if where == "thread":  # as that thread's composer sends: with its send grant
            grant = re.search(r'name="send_grant" value="([^"]+)"',
                              httpx.get(f"{server.url}/o/{org.slug}/chat/t/{held}/", cookies=cookies).text)[1]
            form, headers = {**form, "send_grant": grant}, {**headers, "HX-Request": "true"}

        def blocked_send() -> int:
            return httpx.post(f"{server.url}/o/{org.slug}/chat/t/{held}/send/", data=form, cookies=cookies,
                              headers=headers, timeout=60).status_code

        result: list[int] = []
        blocker = threading.Thread(target=lambda: result.append(blocked_send()))
        blocker.start()
        wait_until_waiting_on_the_lock(lock)

        page.locator("#composer-input").fill("Are you there?")
        page.locator("#composer-input").press("Enter")
        busy = page.locator("#composer-error")
        expect(busy).to_have_text(re.compile(r"Prumo is busy right now\. Sending again in 1 s"))
        assert page.locator("#composer-input").input_value() == "Are you there?"  # kept for the retry

        lock.rollback()  # the other send goes on and gives the connection back
        lock.close()
        if where != "thread":  # the new conversation opens
            expect(page).to_have_url(re.compile(r"/chat/t/\d+/$"))
        expect(page.locator("#messages")).to_contain_text("Are you there?")
        expect(page.locator("#composer-error")).to_have_text("")
        blocker.join(30)
        assert result in ([200], [302])
        with django_db_blocker.unblock():
            created = [pk for pk in in_thread(lambda: owner_threads(org, owner)) if pk not in before]
        asked = created if where != "thread" else [page_thread]
        assert len(asked) == 1, created

        def questions():
            with schema_context(org.schema_name):
                return list(Message.objects.filter(thread_id=asked[0], role="user").values_list("content", flat=True))

        with django_db_blocker.unblock():
            assert in_thread(questions) == ["Are you there?"]
        assert "Internal Server Error" not in server.process.log()
    finally:
        if blocker is not None:
            blocker.join(30)
        server.process.stop()
        with django_db_blocker.unblock():
            in_thread(lambda: threads_remove(org, [held, page_thread, *(
                pk for pk in owner_threads(org, owner) if pk not in before)]))


def owner_threads(org, owner) -> list[int]:
    with schema_context(org.schema_name):
        return list(Thread.objects.filter(user=owner).values_list("pk", flat=True))


def wait_until_waiting_on_the_lock(lock, timeout: float = 20.0) -> None:
    """Until some backend waits on a lock the test's connection holds."""
    deadline = time.monotonic() + timeout
    with psycopg_watch() as watch:
        while time.monotonic() < deadline:
            blocked = watch.execute("SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                                    (lock.info.backend_pid,)).fetchone()[0]
            if blocked:
                return
            time.sleep(0.05)
    raise AssertionError("the other send never reached the locked thread")


def psycopg_watch():
    import psycopg

    params = connection.get_connection_params()
    return psycopg.connect(host=params.get("host", "127.0.0.1"), port=params.get("port", 5432),
                           user=params.get("user"), dbname=connection.settings_dict["NAME"], autocommit=True)
