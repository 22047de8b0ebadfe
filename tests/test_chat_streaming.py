"""Answers streamed over SSE, end to end: the production-style web server (gunicorn + uvicorn
worker) reads the Redis stream that the real Celery worker writes with the built-in demo model.

Questions are asked through the live server's own pages by a signed-in client; the worker commits
the answers, so the tests read the database with the blocker lifted and remove their threads (and
the usage the worker recorded) afterwards. tests/servers.py slows the demo model down
(CHAT_DEMO_DELAY) so that an answer lasts ~4 s: long enough to act mid-answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from django_tenants.utils import schema_context

from .servers import LiveServer, Process, free_port, server_env, wait_for_http, web_command

pytestmark = pytest.mark.slow

SLUG = "org-a"
EMAIL = "owner-a@example.com"
PASSWORD = "correct-horse-battery"
DEMO = "demo/prumo-demo"
CSRF_INPUT = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
RETRY_MS = 1000  # chat.streams.RETRY_MS
ANSWER_TIMEOUT = 30.0  # one demo answer takes ~4 s; this is for a very busy machine
STOP_SECONDS = 1.5  # Stop ends the stream "within a second"; a little slack for a loaded machine
SHORT_SSE_SECONDS = 1.5  # CHAT_SSE_MAX_SECONDS of the second web server (test h)
CAPACITY_STREAMS = 200
MAX_WEB_THREADS = 20
# Besides its bounded async pool (CHAT_REDIS_MAX_CONNECTIONS, which a burst of new streams can fill
# for their catch-up reads), a web process holds a few sync connections: chat's, the cache's, Celery's.
OTHER_REDIS_CONNECTIONS = 8


# ---------------------------------------------------------------- SSE client


@dataclass
class Block:
    """One SSE block (what lies between blank lines): an event, a `retry:` line or comments."""

    event: str | None = None
    data: str | None = None
    id: str | None = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def payload(self):
        return json.loads(self.data) if self.data is not None else None


def parse_block(raw: bytes) -> Block:
    block = Block()
    for line in raw.decode().split("\n"):
        if line.startswith(":"):
            block.comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            block.event = value
        elif name == "data":
            block.data = value if block.data is None else f"{block.data}\n{value}"
        elif name == "id":
            block.id = value
        elif name == "retry":
            block.retry = int(value)
    return block


class Stream:
    """An open SSE connection, read block by block as the server sends them (raw bytes: no decoding)."""

    def __init__(self, client: httpx.Client, url: str, *, last_event_id: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        headers = {"Accept": "text/event-stream", **(headers or {})}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        self._context = client.stream("GET", url, headers=headers)
        self.response = self._context.__enter__()
        self._chunks = self.response.iter_raw()
        self._buffer = b""
        self.eof = False

    def next(self) -> Block | None:
        """The next block; None once the server has ended the response."""
        while b"\n\n" not in self._buffer:
            chunk = next(self._chunks, None)
            if chunk is None:
                self.eof = True
                assert not self._buffer.strip(), f"the stream ended mid-block: {self._buffer!r}"
                return None
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\n\n", 1)
        return parse_block(raw)

    def read(self, until: Callable[[list[Block]], bool] | None = None) -> list[Block]:
        """Blocks until `until(blocks so far)` is true, or to the end of the response."""
        blocks: list[Block] = []
        while (block := self.next()) is not None:
            blocks.append(block)
            if until is not None and until(blocks):
                break
        return blocks

    def close(self) -> None:
        """Hang up (an unfinished response is not reused: the connection is dropped)."""
        self._context.__exit__(None, None, None)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def events(blocks: list[Block]) -> list[Block]:
    return [block for block in blocks if block.event]


def text_of(blocks: list[Block]) -> str:
    return "".join(block.payload["text"] for block in blocks if block.event == "delta")


def deltas(n: int) -> Callable[[list[Block]], bool]:
    return lambda blocks: sum(block.event == "delta" for block in blocks) >= n


def id_key(entry_id: str) -> tuple[int, int]:
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq)


def assert_strictly_increasing_ids(blocks: list[Block]) -> None:
    ids = [id_key(block.id) for block in events(blocks)]
    assert all(block.id for block in events(blocks)), "an event without an id cannot be resumed"
    assert ids == sorted(set(ids)), f"ids repeat or go back: {[b.id for b in events(blocks)]}"


# ---------------------------------------------------------------- the live server, signed in


def csrf_token(client: httpx.Client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, f"GET {url}: {response.status_code}"
    match = CSRF_INPUT.search(response.text)
    assert match, f"no CSRF token in {url}"
    return match.group(1)


@pytest.fixture(scope="module")
def signed_in(live_server_process, tenant_world) -> httpx.Cookies:
    """Session cookies of owner-a, signed in through the live server's login page."""
    return sign_in(live_server_process.url, EMAIL)


def sign_in(base: str, email: str) -> httpx.Cookies:
    """A new session of `email` (any test user: they share PASSWORD), through the login page."""
    with httpx.Client(base_url=base, timeout=10) as client:
        login = "/accounts/login/"
        token = csrf_token(client, login)
        response = client.post(login, data={"csrfmiddlewaretoken": token, "login": email, "password": PASSWORD},
                               headers={"Referer": f"{base}{login}"})
        assert response.status_code == 302, f"login failed ({response.status_code}): {response.text[:2000]}"
        assert client.cookies.get("sessionid"), "no session cookie after login"
        return httpx.Cookies(client.cookies)


@dataclass
class Asked:
    question: str
    thread_id: int
    answer_id: int
    stream_token: str = ""  # what the page puts in its stream URL (chat.templatetags.chat.stream_url)

    @property
    def events_url(self) -> str:
        """The URL the page opens: served without Django's request cycle (chat.stream_direct)."""
        return f"{self.plain_events_url}?s={self.stream_token}" if self.stream_token else self.plain_events_url

    @property
    def plain_events_url(self) -> str:
        """Without a stream token: Django's view (chat.views.message_stream)."""
        return f"/o/{SLUG}/chat/m/{self.answer_id}/events/"

    @property
    def stop_url(self) -> str:
        return f"/o/{SLUG}/chat/m/{self.answer_id}/stop/"

    @property
    def thread_url(self) -> str:
        return f"/o/{SLUG}/chat/t/{self.thread_id}/"


def expected_answer(question: str) -> str:
    """What the demo model writes for `question` (a pure function of the question)."""
    from chat.providers.base import ChatMessage
    from chat.providers.demo import demo_answer

    return demo_answer([ChatMessage(role="user", content=question)])


def threads_remove(organization, thread_ids: list[int]) -> None:
    """Delete threads tests made, and the usage the worker recorded for their answers.

    A generation still running is asked to stop first; its worker then finds no answer to close.
    """
    from billing.models import UsageEvent
    from chat.generation import ACTIVE_SET
    from chat.models import Message, Thread
    from chat.services import cancel_key
    from core.redis_clients import redis_client

    if not thread_ids:
        return
    redis = redis_client()
    schema = organization.schema_name
    with schema_context(schema):
        answers = list(Message.objects.filter(thread_id__in=thread_ids, role=Message.Role.ASSISTANT))
        keys = [answer.stream_key for answer in answers]
        for answer in answers:
            if answer.is_active:
                redis.set(cancel_key(answer.stream_key), "1", ex=60)
        request_ids = [answer.billing_key for answer in answers]
        request_ids += [f"chat-title:{schema}:{thread_id}" for thread_id in thread_ids]
        UsageEvent.objects.filter(organization=organization, request_id__in=request_ids).delete()
        Thread.objects.filter(pk__in=thread_ids).delete()
    if keys:
        redis.delete(*keys)
        redis.zrem(ACTIVE_SET, *keys)


class Chat:
    """owner-a chatting with the demo model on the live server; reads what was committed."""

    def __init__(self, server: LiveServer, cookies: httpx.Cookies, organization, owner, blocker) -> None:
        self.server = server
        self.cookies = cookies
        self.organization = organization
        self.owner = owner
        self.blocker = blocker
        self.thread_ids: list[int] = []
        self.clients: list[httpx.Client] = []
        self.http = self.client()

    def client(self, base_url: str | None = None) -> httpx.Client:
        client = httpx.Client(base_url=base_url or self.server.url, cookies=self.cookies,
                              timeout=httpx.Timeout(10, read=30), follow_redirects=False)
        self.clients.append(client)
        return client

    def db(self, fn):
        with self.blocker.unblock(), schema_context(self.organization.schema_name):
            return fn()

    def ask(self, question: str | None = None) -> Asked:
        """Ask in a new thread through the chat page's form; the worker starts answering."""
        from chat.models import Message

        question = question or f"How do answers resume after a refresh? {uuid.uuid4().hex[:8]}"
        home = f"/o/{SLUG}/chat/"
        token = csrf_token(self.http, home)
        response = self.http.post(f"/o/{SLUG}/chat/new/",
                                  data={"csrfmiddlewaretoken": token, "content": question, "model": DEMO},
                                  headers={"Referer": f"{self.server.url}{home}"})
        assert response.status_code == 302, f"not sent ({response.status_code}): {response.text[:2000]}"
        match = re.search(rf"/o/{SLUG}/chat/t/(\d+)/$", response.headers["location"])
        assert match, response.headers["location"]
        thread_id = int(match.group(1))
        self.thread_ids.append(thread_id)
        answer = self.db(lambda: Message.objects.get(thread_id=thread_id, role=Message.Role.ASSISTANT))
        return Asked(question=question, thread_id=thread_id, answer_id=answer.pk,
                     stream_token=self.stream_token(answer.pk))

    def stream_token(self, message_id: int, session_key: str | None = None) -> str:
        from chat.streams import stream_token

        return stream_token(user_id=self.owner.pk, session_key=session_key or self.cookies.get("sessionid"),
                            slug=SLUG, schema=self.organization.schema_name, message_id=message_id)

    def stream(self, asked: Asked, *, client: httpx.Client | None = None, last_event_id: str | None = None,
               headers: dict[str, str] | None = None) -> Stream:
        stream = Stream(client or self.http, asked.events_url, last_event_id=last_event_id, headers=headers)
        if stream.response.status_code != 200:
            body = stream.response.read()[:2000]
            stream.close()
            raise AssertionError(f"GET {asked.events_url}: {stream.response.status_code} {body!r}")
        return stream

    def message(self, message_id: int):
        from chat.models import Message

        return self.db(lambda: Message.objects.get(pk=message_id))

    def wait_final(self, message_id: int, timeout: float = ANSWER_TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            message = self.message(message_id)
            if not message.is_active:
                return message
            assert time.monotonic() < deadline, f"answer {message_id} still {message.status} after {timeout}s"
            time.sleep(0.1)

    def stop(self, asked: Asked) -> httpx.Response:
        token = csrf_token(self.http, asked.thread_url)
        return self.http.post(asked.stop_url, data={"csrfmiddlewaretoken": token},
                              headers={"Referer": f"{self.server.url}{asked.thread_url}"})

    def fabricate(self, count: int) -> list[tuple[int, str]]:
        """`count` committed answers in `streaming` status with no generation behind them: (id, stream key).

        The test writes their Redis streams itself.
        """
        from chat.models import Message, Thread

        def make():
            thread = Thread.objects.create(user=self.owner, model_id=DEMO, title="streaming test")
            self.thread_ids.append(thread.pk)
            rows = Message.objects.bulk_create([
                Message(thread=thread, role=Message.Role.ASSISTANT, status=Message.Status.STREAMING, model_id=DEMO)
                for _ in range(count)
            ])
            return [(row.pk, row.stream_key) for row in rows]

        return self.db(make)

    def close(self) -> None:
        for client in self.clients:
            client.close()
        with self.blocker.unblock():
            threads_remove(self.organization, self.thread_ids)


@pytest.fixture(autouse=True)
def quiet_httpx():
    """httpx logs every request at INFO: 200 lines of noise in a failure report."""
    logger = logging.getLogger("httpx")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


@pytest.fixture
def chat(live_server_process, celery_worker_process, tenant_world, signed_in, django_db_blocker):
    helper = Chat(live_server_process, signed_in, tenant_world["a"]["org"], tenant_world["a"]["owner"],
                  django_db_blocker)
    yield helper
    helper.close()


# ---------------------------------------------------------------- the web worker process


def web_worker_pid(server: LiveServer) -> int:
    """The gunicorn worker (WEB_CONCURRENCY=1) under the server's master process."""
    master = server.process.popen.pid
    children: set[int] = set()
    for task in Path(f"/proc/{master}/task").iterdir():
        try:
            children.update(int(pid) for pid in (task / "children").read_text().split())
        except FileNotFoundError:  # the thread ended meanwhile
            continue
    assert len(children) == 1, f"expected one gunicorn worker under {master}, found {sorted(children)}"
    return children.pop()


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def tcp_connections(pid: int) -> list[tuple[int, int]]:
    """(local port, remote port) of the process's established TCP connections."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    found = []
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            parts = line.split()
            local, remote, state, inode = parts[1], parts[2], parts[3], parts[9]
            if inode in inodes and state == "01":  # ESTABLISHED
                found.append((int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16)))
    return found


def redis_connections(pid: int) -> dict[str, int]:
    """The process's chat connections to Redis, from CLIENT LIST (they carry the process's name),
    and from its TCP sockets when Redis is reached over TCP (the embedded one is a unix socket)."""
    from django.conf import settings

    from core.redis_clients import redis_client

    listed = [client for client in redis_client().client_list() if client.get("name") == f"prumo-chat-{pid}"]
    blocked_reads = [client for client in listed if client.get("cmd") == "xread" and "b" in client.get("flags", "")]
    counts = {"client_list": len(listed), "blocked_xread": len(blocked_reads)}
    parts = urlsplit(settings.REDIS_URL)
    if parts.scheme in ("redis", "rediss"):
        port = parts.port or 6379
        counts["sockets"] = len({local for local, remote in tcp_connections(pid) if remote == port})
    return counts


# ---------------------------------------------------------------- tests


def test_answer_read_from_start_to_end_equals_the_saved_message(chat):
    asked = chat.ask()
    with chat.stream(asked) as stream:
        blocks = stream.read()
        assert stream.eof
    assert blocks[0].retry == RETRY_MS
    kinds = [block.event for block in events(blocks)]
    assert kinds[0] == "start" and kinds[-1] == "end", kinds
    assert kinds.count("end") == 1 and kinds.count("start") == 1, kinds
    assert kinds.count("delta") > 10, "the answer did not stream in pieces"
    assert events(blocks)[-1].payload == {"status": "complete"}
    assert_strictly_increasing_ids(blocks)
    # The end entry is written after the answer is committed: the database already has it.
    message = chat.message(asked.answer_id)
    assert message.status == "complete"
    assert text_of(blocks) == message.content == expected_answer(asked.question)


def test_a_stream_opened_after_the_answer_ended_replays_it_while_redis_keeps_it(chat):
    """A busy server can open an answer's stream after the answer ended: it still gets the text as it was
    streamed (then `end`), and a resume only what comes after its Last-Event-ID. Once Redis has let the stream
    go (STREAM_TTL), `end` alone: the page shows the answer from the database."""
    from core.redis_clients import redis_client

    asked = chat.ask()
    message = chat.wait_final(asked.answer_id)
    with chat.stream(asked) as late:
        blocks = late.read()
    kinds = [block.event for block in events(blocks)]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("delta") > 10, kinds
    assert text_of(blocks) == message.content == expected_answer(asked.question)
    assert_strictly_increasing_ids(blocks)
    middle = events(blocks)[len(blocks) // 2].id
    with chat.stream(asked, last_event_id=middle) as resumed:
        rest = resumed.read()
    assert all(id_key(block.id) > id_key(middle) for block in events(rest))
    assert [block.event for block in events(rest)][-1] == "end"

    redis_client().delete(f"chat:gen:{chat.organization.schema_name}:{asked.answer_id}")  # what STREAM_TTL does
    # By then the page's stream token has expired too (it lives shorter): Django's view serves the URL.
    with chat.stream(replace(asked, stream_token="")) as expired:
        alone = expired.read()
    assert [(block.event, block.payload) for block in events(alone)] == [("end", {"status": "complete"})]


def test_reconnecting_with_last_event_id_resumes_without_gap_or_duplicate(chat):
    asked = chat.ask()
    with chat.stream(asked) as first:
        before = first.read(until=deltas(3))
    last_id = events(before)[-1].id
    assert chat.message(asked.answer_id).is_active, "the answer ended before the reader hung up"

    with chat.stream(asked, last_event_id=last_id) as second:
        after = second.read()
    assert after[0].retry == RETRY_MS
    assert events(after), "nothing after the resume point"
    assert all(id_key(block.id) > id_key(last_id) for block in events(after)), "resent an event already read"
    assert [block.event for block in events(after)].count("start") == 0
    assert [block.event for block in events(after)].count("end") == 1
    assert text_of(after), "the answer had ended: nothing was resumed mid-answer"
    assert_strictly_increasing_ids(before + after)

    message = chat.message(asked.answer_id)
    assert message.status == "complete"
    assert text_of(before) + text_of(after) == message.content == expected_answer(asked.question)


def test_two_tabs_reading_the_same_answer_get_identical_text(chat):
    asked = chat.ask()
    second_tab = chat.client()
    with chat.stream(asked) as tab1:
        head = tab1.read(until=deltas(2))
        assert chat.message(asked.answer_id).is_active
        # The second tab opens while the first is still reading; both read to the end at once.
        def read_tab2() -> list[Block]:
            with chat.stream(asked, client=second_tab) as tab2:
                return tab2.read()

        with ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(read_tab2)
            tail = tab1.read()
            tab2 = future.result(timeout=ANSWER_TIMEOUT)
    tab1_blocks = head + tail
    message = chat.message(asked.answer_id)
    assert text_of(tab1_blocks) == text_of(tab2) == message.content == expected_answer(asked.question)
    assert [b.id for b in events(tab1_blocks)] == [b.id for b in events(tab2)]
    for blocks in (tab1_blocks, tab2):
        assert [block.event for block in events(blocks)].count("end") == 1


def test_closing_the_stream_does_not_stop_the_answer(chat):
    from core.redis_clients import redis_client

    asked = chat.ask()
    with chat.stream(asked) as stream:
        stream.read(until=deltas(2))
    assert chat.message(asked.answer_id).is_active, "the answer ended before the reader hung up"

    message = chat.wait_final(asked.answer_id)
    assert message.status == "complete"
    assert message.content == expected_answer(asked.question)
    key = chat.db(lambda: message.stream_key)
    *_, (_id, last) = redis_client().xrange(key)
    assert last == {"t": "end", "status": "complete"}


def test_stop_ends_the_stream_within_a_second_and_keeps_the_partial_answer(chat):
    asked = chat.ask()
    with chat.stream(asked) as stream:
        before = stream.read(until=deltas(3))
        started = time.monotonic()
        response = chat.stop(asked)
        assert response.status_code == 302, response.text[:2000]
        after = stream.read()
        elapsed = time.monotonic() - started
        assert stream.eof
    blocks = before + after
    ends = [block for block in events(blocks) if block.event == "end"]
    assert [block.payload for block in ends] == [{"status": "stopped"}]
    print(f"\nstream ended {elapsed:.2f}s after Stop was posted")
    assert elapsed < STOP_SECONDS, f"the stream ended {elapsed:.2f}s after Stop"

    message = chat.message(asked.answer_id)
    full = expected_answer(asked.question)
    assert message.status == "stopped"
    assert message.content == text_of(blocks), "the saved text differs from what was streamed"
    assert 0 < len(message.content) < len(full) and full.startswith(message.content)


def test_event_stream_is_not_compressed_nor_cached(chat):
    from chat.models import Message
    from core.redis_clients import redis_client

    [(answer_id, key)] = chat.fabricate(1)
    text = "plain text, many times over. " * 200  # big enough for any gzip threshold
    redis = redis_client()
    redis.xadd(key, {"t": "start", "model": DEMO, "name": "Demo"})
    redis.xadd(key, {"t": "delta", "d": text})
    redis.xadd(key, {"t": "end", "status": "complete"})
    redis.expire(key, 600)
    asked = Asked(question="", thread_id=0, answer_id=answer_id)

    def check(stream: Stream) -> list[Block]:
        headers = stream.response.headers
        assert "content-encoding" not in headers, headers
        assert headers["content-type"].split(";")[0].strip() == "text/event-stream", headers
        assert "no-cache" in [value.strip() for value in headers["cache-control"].split(",")], headers
        return stream.read()  # raw bytes: a compressed body would not parse

    gzip = {"Accept-Encoding": "gzip"}
    with chat.stream(asked, headers=gzip) as stream:  # active answer: read from Redis
        blocks = check(stream)
    assert blocks[0].retry == RETRY_MS
    assert text_of(blocks) == text
    assert [block.payload for block in events(blocks) if block.event == "end"] == [{"status": "complete"}]

    chat.db(lambda: Message.objects.filter(pk=answer_id).update(status=Message.Status.COMPLETE, content=text))
    with chat.stream(asked, headers=gzip) as stream:  # final answer: replayed from Redis
        blocks = check(stream)
    assert text_of(blocks) == text
    redis.delete(key)
    with chat.stream(asked, headers=gzip) as stream:  # final, and gone from Redis: one end event
        blocks = check(stream)
    assert [(block.event, block.payload) for block in events(blocks)] == [("end", {"status": "complete"})]


def test_one_web_process_serves_200_streams_with_few_threads_and_redis_connections(chat, live_server_process):
    from django.conf import settings

    from core.redis_clients import redis_client

    answers = chat.fabricate(CAPACITY_STREAMS)
    redis = redis_client()
    with redis.pipeline(transaction=False) as pipe:
        for _answer_id, key in answers:
            pipe.xadd(key, {"t": "start", "model": DEMO, "name": "Demo"})
            pipe.expire(key, 600)
        pipe.execute()
    marker = f"marker-{uuid.uuid4().hex}"
    pid = web_worker_pid(live_server_process)
    before = {"threads": thread_count(pid), **redis_connections(pid)}
    samples: list[dict[str, int]] = []

    def sample() -> None:
        """Counts while the streams idle; the hub may be between two reads, so look a few times."""
        deadline = time.monotonic() + 3
        while True:
            samples.append({"threads": thread_count(pid), **redis_connections(pid)})
            if samples[-1]["blocked_xread"] == 1 or time.monotonic() > deadline:
                return
            time.sleep(0.05)

    def publish(fields: dict[str, str]) -> None:
        with redis.pipeline(transaction=False) as pipe:
            for _answer_id, key in answers:
                pipe.xadd(key, fields)
            pipe.execute()

    async def run() -> list[bytes]:
        opened: set[int] = set()
        delivered: set[int] = set()

        async def reader(client: httpx.AsyncClient, n: int, answer_id: int) -> bytes:
            buffer = b""
            async with client.stream("GET", f"/o/{SLUG}/chat/m/{answer_id}/events/") as response:
                assert response.status_code == 200, response.status_code
                async for chunk in response.aiter_raw():
                    buffer += chunk
                    if b"event: start" in buffer:
                        opened.add(n)
                    if marker.encode() in buffer:
                        delivered.add(n)
            return buffer

        async def until(condition: Callable[[], bool], tasks: list[asyncio.Task], what: str) -> None:
            deadline = time.monotonic() + 60
            while not condition():
                failed = [task for task in tasks if task.done()]
                if failed:
                    await failed[0]  # raises the reader's error
                    raise AssertionError(f"a reader ended before {what}")
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                await asyncio.sleep(0.05)

        limits = httpx.Limits(max_connections=CAPACITY_STREAMS + 10, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=live_server_process.url, cookies=chat.cookies, limits=limits,
                                     timeout=httpx.Timeout(60)) as client:
            tasks = [asyncio.create_task(reader(client, n, answer_id)) for n, (answer_id, _key) in enumerate(answers)]
            try:
                await until(lambda: len(opened) == CAPACITY_STREAMS, tasks, "every stream to open")
                await asyncio.to_thread(sample)  # every stream open and caught up
                await asyncio.to_thread(publish, {"t": "delta", "d": marker})
                await until(lambda: len(delivered) == CAPACITY_STREAMS, tasks, "every reader to get the entry")
                await asyncio.to_thread(sample)
                await asyncio.to_thread(publish, {"t": "end", "status": "complete"})
                return await asyncio.wait_for(asyncio.gather(*tasks), 60)
            finally:
                for task in tasks:
                    task.cancel()

    bodies = asyncio.run(run())
    after = {"threads": thread_count(pid), **redis_connections(pid)}
    print(f"\nweb worker {pid} with {CAPACITY_STREAMS} open streams: before {before}, "
          f"while open {samples}, after {after}")

    assert web_worker_pid(live_server_process) == pid, "the web worker restarted during the test"
    assert all(body.count(marker.encode()) == 1 for body in bodies), "a reader missed (or repeated) the entry"
    assert all(body.count(b"event: end") == 1 for body in bodies)
    most_connections = settings.CHAT_REDIS_MAX_CONNECTIONS + OTHER_REDIS_CONNECTIONS
    for measured in samples:
        assert measured["threads"] < MAX_WEB_THREADS, f"threads grow with streams: {samples}"
        assert measured.get("sockets", 0) <= most_connections, f"Redis connections grow with streams: {samples}"
        assert 0 < measured["client_list"] <= most_connections, f"Redis counts otherwise: {samples}"
        # One blocking XREAD serves every stream of the process.
        assert measured["blocked_xread"] <= 1, f"more than one blocked XREAD: {samples}"
    assert any(measured["blocked_xread"] == 1 for measured in samples), f"no blocked XREAD seen: {samples}"


@pytest.fixture(scope="module")
def short_stream_server(request, live_server_process, test_database_url, redis_url, tmp_path_factory) -> str:
    """A second web server whose stream connections end after SHORT_SSE_SECONDS (same database and Redis)."""
    workdir = tmp_path_factory.mktemp("short-streams")
    (workdir / "mail").mkdir()
    port = free_port()
    command, extra = web_command(port)
    env = server_env(database_url=test_database_url, redis_url=redis_url, email_dir=workdir / "mail", port=port,
                     CHAT_SSE_MAX_SECONDS=str(SHORT_SSE_SECONDS), **extra)
    process = Process("web-short-streams", command, env, workdir / "web.log").start()
    url = f"http://127.0.0.1:{port}"
    wait_for_http(process, f"{url}/healthz")
    yield url
    process.stop()
    if request.session.testsfailed:
        process.print_log()


def test_connection_ends_by_itself_and_resumes_with_last_event_id(chat, short_stream_server):
    asked = chat.ask()
    client = chat.client(base_url=short_stream_server)  # same session: same database
    connections: list[tuple[list[Block], float]] = []
    last_id = None
    while True:
        assert len(connections) < 30, "the answer never ended"
        started = time.monotonic()
        with chat.stream(asked, client=client, last_event_id=last_id) as stream:
            blocks = stream.read()
        connections.append((blocks, time.monotonic() - started))
        assert blocks[0].retry == RETRY_MS, "a connection must start with its retry line"
        if events(blocks):
            last_id = events(blocks)[-1].id
        if any(block.event == "end" for block in blocks):
            break
        assert blocks[-1].comments == ["reconnect"], blocks[-1]

    first, duration = connections[0]
    assert not any(block.event == "end" for block in first)
    assert SHORT_SSE_SECONDS - 0.1 <= duration < SHORT_SSE_SECONDS + 3, duration
    assert len(connections) >= 2
    everything = [block for blocks, _duration in connections for block in blocks]
    assert_strictly_increasing_ids(everything)
    assert [block.event for block in events(everything)].count("end") == 1
    message = chat.message(asked.answer_id)
    assert message.status == "complete"
    assert text_of(everything) == message.content == expected_answer(asked.question)



# ---------------------------------------------------------------- the page's stream URL (chat.stream_direct)


def test_the_page_opens_its_answer_at_a_url_with_a_stream_token_that_reads_it_whole(chat):
    asked = chat.ask()
    page = chat.http.get(asked.thread_url)
    url = re.search(r'data-stream-url="([^"]+)"', page.text)
    assert url and url[1].startswith(f"{asked.plain_events_url}?s="), page.text[:2000]
    with Stream(chat.http, url[1]) as stream:
        blocks = stream.read()
    assert stream.response.headers["content-type"] == "text/event-stream"
    assert events(blocks)[-1].payload == {"status": "complete"}
    assert text_of(blocks) == chat.wait_final(asked.answer_id).content == expected_answer(asked.question)


def fabricated_stream(chat, message_id: int, text: str) -> str:
    """A finished answer's Redis stream for `message_id`, which has no row: only a route that reads no database
    can serve it (Django's view answers 404)."""
    from core.redis_clients import redis_client

    key = f"chat:gen:{chat.organization.schema_name}:{message_id}"
    redis = redis_client()
    redis.xadd(key, {"t": "start", "model": DEMO, "name": "Demo"})
    redis.xadd(key, {"t": "delta", "d": text})
    redis.xadd(key, {"t": "end", "status": "complete"})
    redis.expire(key, 300)
    return key


def test_a_stream_token_is_served_without_the_database_and_only_with_its_session(chat, live_server_process):
    from core.redis_clients import redis_client

    missing = 2_000_000_000 + uuid.uuid4().int % 1_000_000  # no message has this id
    key = fabricated_stream(chat, missing, "read from Redis alone")
    tokened = f"/o/{SLUG}/chat/m/{missing}/events/?s={chat.stream_token(missing)}"
    try:
        with Stream(chat.http, tokened) as stream:
            assert stream.response.status_code == 200
            blocks = stream.read()
        assert text_of(blocks) == "read from Redis alone"  # served directly: no query found the missing row
        # Everything else goes to Django's view, which finds no such answer.
        assert chat.http.get(f"/o/{SLUG}/chat/m/{missing}/events/").status_code == 404
        other_session = chat.client()
        other_session.cookies = sign_in(live_server_process.url, EMAIL)  # the same person, another session
        assert other_session.get(tokened).status_code == 404
        assert chat.http.get(tokened[:-3] + ("A" if tokened[-3] != "A" else "B") + tokened[-2:]).status_code == 404
        other_answer = f"/o/{SLUG}/chat/m/{missing + 1}/events/?s={chat.stream_token(missing)}"
        assert chat.http.get(other_answer).status_code == 404
        anonymous = httpx.Client(base_url=live_server_process.url, follow_redirects=False, timeout=10)
        with anonymous:
            assert anonymous.get(tokened).status_code == 404  # Django: not a member
    finally:
        redis_client().delete(key)


def test_a_member_of_another_organization_gets_404_for_an_answer_url_with_its_token(chat, live_server_process):
    asked = chat.ask()
    outsider = chat.client()
    outsider.cookies = sign_in(live_server_process.url, "owner-b@example.com")
    assert outsider.get(asked.events_url).status_code == 404
    assert outsider.get(asked.plain_events_url).status_code == 404
    chat.wait_final(asked.answer_id)


def test_stream_tokens_expire_and_name_their_session_answer_and_organization(settings):
    from chat.generation import STREAM_TTL
    from chat.streams import stream_token, stream_token_read

    assert settings.CHAT_STREAM_TOKEN_SECONDS < STREAM_TTL  # a missing stream then means "not started yet"
    token = stream_token(user_id=7, session_key="session-1", slug="org-a", schema="org_org_a", message_id=42)
    grant = stream_token_read(token, session_key="session-1", slug="org-a", message_id=42)
    assert (grant.user_id, grant.schema, grant.key) == (7, "org_org_a", "chat:gen:org_org_a:42")
    assert "session-1" not in token
    for session_key, slug, message_id in (("session-2", "org-a", 42), ("", "org-a", 42), ("session-1", "org-b", 42),
                                          ("session-1", "org-a", 43)):
        assert stream_token_read(token, session_key=session_key, slug=slug, message_id=message_id) is None
    settings.CHAT_STREAM_TOKEN_SECONDS = 0
    time.sleep(1.1)
    assert stream_token_read(token, session_key="session-1", slug="org-a", message_id=42) is None


# ---------------------------------------------------------------- the generation worker's threads


def streaming_at_once(chat, answer_ids: list[int], until: float) -> int:
    """The most of `answer_ids` seen streaming at the same moment, sampled until all are final or `until`."""
    from chat.models import Message

    most = 0
    while time.monotonic() < until:
        statuses = chat.db(lambda: list(Message.objects.filter(pk__in=answer_ids).values_list("status", flat=True)))
        most = max(most, statuses.count("streaming"))
        if all(status not in ("pending", "streaming") for status in statuses):
            break
        time.sleep(0.05)
    return most


@pytest.fixture
def org_a_on_business(tenant_world, django_db_blocker):
    """org-a on Business for the test: 16 answers at once and 60 messages a minute (Free allows 2 and 10)."""
    from billing.models import BillingAccount, Plan
    from chat.snapshot import org_config_bump

    org = tenant_world["a"]["org"]
    with django_db_blocker.unblock():
        previous = BillingAccount.objects.get(pk=org.pk).plan_id
        BillingAccount.objects.filter(pk=org.pk).update(plan=Plan.objects.get(code="business"))
        org_config_bump()
    yield
    with django_db_blocker.unblock():
        BillingAccount.objects.filter(pk=org.pk).update(plan_id=previous)
        org_config_bump()


def test_answers_stream_at_once_beyond_the_workers_threads(chat, org_a_on_business):
    """The worker has 4 threads (tests/servers.py); an answer holds one only while it is claimed and its
    context built, then streams on the worker's event loop: 8 answers stream at the same time, and all end."""
    asked = [chat.ask() for _ in range(8)]
    most = streaming_at_once(chat, [a.answer_id for a in asked], time.monotonic() + ANSWER_TIMEOUT)
    assert most > 4, f"at most {most} answers streamed at once on a 4-thread worker"
    for one in asked:
        final = chat.wait_final(one.answer_id)
        assert (final.status, final.content) == ("complete", expected_answer(one.question))


def test_a_warm_shutdown_finishes_the_answers_streaming_then_exits(live_server_process, tenant_world, org_a_on_business,
                                                                     test_database_url, redis_url, tmp_path,
                                                                     django_db_blocker):
    """SIGTERM to the generation worker mid-answer: it takes no new task, waits for the answers streaming on
    its loop to end and be closed (none left to the reaper as interrupted), then exits by itself."""
    import signal

    from .servers import start_celery_worker, start_live_server

    queue = f"generation-drain-{uuid.uuid4().hex[:6]}"
    server = start_live_server(database_url=test_database_url, redis_url=redis_url, workdir=tmp_path / "web",
                               env_extra={"GENERATION_QUEUE": queue})
    worker = start_celery_worker(database_url=test_database_url, redis_url=redis_url, workdir=tmp_path / "worker",
                                 email_dir=server.email_dir, queues=queue, env_extra={"GENERATION_QUEUE": queue})
    chat = Chat(server, sign_in(server.url, EMAIL), tenant_world["a"]["org"], tenant_world["a"]["owner"],
                django_db_blocker)
    try:
        asked = [chat.ask() for _ in range(3)]
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while chat.message(asked[-1].answer_id).status != "streaming":
            assert time.monotonic() < deadline, "the answers never started"
            time.sleep(0.05)
        assert all(chat.message(a.answer_id).status == "streaming" for a in asked)
        os.kill(worker.process.popen.pid, signal.SIGTERM)
        assert worker.process.popen.wait(timeout=ANSWER_TIMEOUT) == 0, worker.process.log()[-3000:]
        for one in asked:
            final = chat.message(one.answer_id)
            assert (final.status, final.content) == ("complete", expected_answer(one.question)), final.status
        assert "left to the reaper" not in worker.process.log()
    finally:
        chat.close()
        worker.process.stop()
        server.process.stop()


def test_a_demo_answer_gives_its_thread_a_title(chat):
    """Offline, with only the demo model, a new conversation still gets a title (issue 13, item 7)."""
    from chat.models import Thread
    from chat.titles import title_from_text

    asked = chat.ask("Which documents does a company need to open a bank account in Brazil today?")
    assert chat.wait_final(asked.answer_id).status == "complete"
    deadline = time.monotonic() + ANSWER_TIMEOUT
    while not (title := chat.db(lambda: Thread.objects.get(pk=asked.thread_id).title)):
        assert time.monotonic() < deadline, "the thread still has no title"
        time.sleep(0.1)
    assert title == title_from_text(asked.question) == "Which documents does a company need to open…"
    page = chat.http.get(asked.thread_url)
    assert f'<h1 data-testid="thread-title">{title}</h1>' in page.text
