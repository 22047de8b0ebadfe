"""Error reporting: with SENTRY_DSN set, a server error reaches Sentry (a local fake speaking its envelope
protocol) tagged with the request id and without personal data; the 500 page shows the request id and says the
team was notified only when that is true, in both languages."""

from __future__ import annotations

import gzip
import json
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.test import Client

pytestmark = pytest.mark.urls("tests.urls_error")


class FakeSentry:
    """Receives envelopes at /api/<project>/envelope/ and keeps their events; any other route fails the test."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.unrecognized: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path.rstrip("/") != "/api/1/envelope":
                    fake.unrecognized.append(self.path)
                    self.send_response(404)
                else:
                    fake.take(body)
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def dsn(self) -> str:
        return f"http://publickey@127.0.0.1:{self.server.server_address[1]}/1"

    def take(self, envelope: bytes) -> None:
        lines = envelope.split(b"\n")
        for header, payload in zip(lines[1::2], lines[2::2], strict=False):
            if json.loads(header).get("type") == "event":
                self.events.append(json.loads(payload))

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sentry(settings):
    import sentry_sdk

    from core.observability import sentry_init

    fake = FakeSentry()
    settings.SENTRY_DSN = fake.dsn
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sentry_init(dsn=fake.dsn, environment="tests", release="")
    # The installed SDK's current options: no deprecated one (send_default_pii warns since data_collection came).
    assert [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)] == []
    assert not sentry_sdk.get_client().options["data_collection"]["user_info"]  # still no personal data
    yield fake
    sentry_sdk.get_client().close(timeout=2)
    sentry_sdk.init()  # no DSN: reporting off again
    fake.stop()
    assert fake.unrecognized == []


@pytest.mark.django_db
def test_a_server_error_reaches_sentry_with_the_request_id_and_no_personal_data(sentry):
    import sentry_sdk

    response = Client(raise_request_exception=False).get(
        "/tests/fail", headers={"X-Request-ID": "sentry-req-42", "Cookie": "sessionid=secret-session"})
    assert response.status_code == 500
    page = response.content.decode()
    assert "sentry-req-42" in page and "The team has been notified." in page
    sentry_sdk.flush(timeout=5)

    (event,) = [event for event in sentry.events if event.get("exception")]
    assert event["exception"]["values"][-1]["type"] == "RuntimeError"
    assert event["tags"]["request_id"] == "sentry-req-42"
    assert event["environment"] == "tests"
    assert "secret-session" not in json.dumps(event)  # no cookies
    assert "ip_address" not in event.get("user", {})


@pytest.mark.django_db
@pytest.mark.parametrize(("language", "failed", "notified"), [
    ("en", "Something went wrong", "The team has been notified."),
    ("pt-br", "Algo deu errado", "A equipe foi avisada."),
])
def test_the_500_page_says_the_team_was_notified_only_when_it_was(settings, language, failed, notified):
    settings.SENTRY_DSN = ""
    client = Client(raise_request_exception=False, headers={"Accept-Language": language})
    page = client.get("/tests/fail", headers={"X-Request-ID": "page-req-7"}).content.decode()
    assert failed in page and "page-req-7" in page
    assert notified not in page

    settings.SENTRY_DSN = "http://publickey@127.0.0.1:9/1"  # the page reads the setting; nothing is sent here
    assert notified in client.get("/tests/fail").content.decode()
