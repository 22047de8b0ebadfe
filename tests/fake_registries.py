"""A local fake of the four CNPJ registries: one threaded HTTP server on 127.0.0.1, routed by path prefix.

    /cnpjws/cnpj/{cnpj}              publica.cnpj.ws
    /brasilapi/api/cnpj/v1/{cnpj}    BrasilAPI
    /minhareceita/{cnpj}             minha-receita (and /minhareceita/updated)
    /receitaws/v1/cnpj/{cnpj}        ReceitaWS

Point the clients at it with `settings` overrides from `fake.settings()`. It serves the sample
payloads of tests/data/checks/ (BrasilAPI and minha-receita share theirs, as in production),
answers each provider's own not-found for other CNPJs (404, or ReceitaWS's HTTP 200 with
`status: ERROR`), and can be told to fail the next N requests, or every request for one CNPJ,
the ways these providers fail:

    fake.fail("cnpjws", RATE_LIMIT, retry_after=30)             # 429 + Retry-After: 30 (+ cnpj.ws's body)
    fake.fail("cnpjws", RATE_LIMIT, retry_after=30, header=None) # only "Liberação ocorrerá em …" in the body
    fake.fail("brasilapi", RATE_LIMIT, retry_after_date=True)   # Retry-After as an HTTP date
    fake.fail("brasilapi", SERVER_ERROR, times=3)               # 500 with BrasilAPI's body
    fake.fail("minhareceita", TIMEOUT, hang=2)                  # no answer for 2 s
    fake.fail("receitaws", RECEITAWS_ERROR, message="Timeout")  # HTTP 200, status ERROR
    fake.fail("brasilapi", NOT_FOUND, cnpj="19131243000197", times=None)  # always, for that CNPJ

`fake.count("cnpjws")` counts company requests received by a provider (not `/updated`).
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "data" / "checks"
PROVIDERS = ("cnpjws", "brasilapi", "minhareceita", "receitaws")
SETTINGS = {"cnpjws": "CNPJWS_BASE_URL", "brasilapi": "BRASILAPI_BASE_URL",
            "minhareceita": "MINHARECEITA_BASE_URL", "receitaws": "RECEITAWS_BASE_URL"}
ROUTES = {
    "cnpjws": re.compile(r"^/cnpjws/cnpj/(?P<cnpj>[^/]+)$"),
    "brasilapi": re.compile(r"^/brasilapi/api/cnpj/v1/(?P<cnpj>[^/]+)$"),
    "minhareceita": re.compile(r"^/minhareceita/(?P<cnpj>[^/]+)$"),
    "receitaws": re.compile(r"^/receitaws/v1/cnpj/(?P<cnpj>[^/]+)$"),
}
CANONICAL = re.compile(r"^[0-9A-Z]{14}$")

# Failure modes for `fail`.
NOT_FOUND = "not_found"  # the provider's own not-found (404; ReceitaWS: 200 + "CNPJ rejeitado pela Receita Federal")
INVALID = "invalid"  # the provider's "invalid CNPJ" (400; ReceitaWS: 200 + "CNPJ inválido")
RATE_LIMIT = "rate_limit"  # 429 with Retry-After (seconds or HTTP date) and the provider's body
SERVER_ERROR = "server_error"  # 500 with the provider's body
TIMEOUT = "timeout"  # no byte at all for `hang` seconds, then the connection closes
RECEITAWS_ERROR = "receitaws_error"  # HTTP 200 {"status": "ERROR", "message": message}
NON_JSON = "non_json"  # 200 with an HTML page (a proxy's error page)
STATUS = "status"  # any `status`, `body` and `headers`
MODES = frozenset({NOT_FOUND, INVALID, RATE_LIMIT, SERVER_ERROR, TIMEOUT, RECEITAWS_ERROR, NON_JSON, STATUS})
_DEFAULT_HEADER = object()


def load_json(name: str) -> Any:
    return json.loads((DATA_DIR / name).read_text(encoding="utf-8"))


def error_bodies() -> dict[str, Any]:
    return load_json("error_bodies.json")


def default_companies() -> dict[str, dict[str, dict]]:
    """Sample payloads by provider and CNPJ (BrasilAPI and minha-receita serve the same ones)."""
    companies: dict[str, dict[str, dict]] = {provider: {} for provider in PROVIDERS}
    for path in sorted(DATA_DIR.glob("*.json")):
        payload = json.loads(path.read_text(encoding="utf-8"))
        if path.name.startswith("cnpjws_"):
            companies["cnpjws"][payload["estabelecimento"]["cnpj"]] = payload
        elif path.name.startswith("minhareceita_"):
            companies["brasilapi"][payload["cnpj"]] = payload
            companies["minhareceita"][payload["cnpj"]] = payload
        elif path.name.startswith("receitaws_"):
            companies["receitaws"]["".join(c for c in payload["cnpj"] if c.isalnum())] = payload
    return companies


@dataclass
class Failure:
    mode: str
    cnpj: str | None = None
    remaining: int | None = 1  # None: every matching request
    retry_after: float | None = 60
    retry_after_date: bool = False
    header: Any = _DEFAULT_HEADER  # Retry-After value to send; None: none (cnpj.ws: date in the body only)
    hang: float = 5.0
    status: int = 500
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    message: str = "Timeout"


@dataclass
class Received:
    provider: str
    path: str
    cnpj: str | None
    headers: dict[str, str]
    at: float


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True

    def handle_error(self, request, client_address) -> None:
        # Clients that timed out reset their connections: expected here.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeRegistries:
    def __init__(self) -> None:
        self.companies = default_companies()
        self.errors = error_bodies()
        self.updated = "2026-09"  # minha-receita's /updated
        # Providers that refuse alphanumeric CNPJs with their "invalid" answer (unverified live: §1.5).
        self.alphanumeric = {"cnpjws": False, "brasilapi": True, "minhareceita": True, "receitaws": False}
        self.requests: list[Received] = []
        self._failures: dict[str, deque[Failure]] = {provider: deque() for provider in PROVIDERS}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # Lifecycle

    def start(self) -> FakeRegistries:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 30
            disable_nagle_algorithm = True

            def do_GET(self):
                fake._handle(self)

            def log_message(self, *args):
                pass

        self._stopping.clear()
        self._server = _Server(("127.0.0.1", 0), Handler)  # a free port chosen by the OS
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-registries", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # hanging answers wake up
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> FakeRegistries:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def base_url(self, provider: str) -> str:
        return f"{self.url}/{provider}"

    def settings(self) -> dict[str, str]:
        """Django settings pointing every client at this fake."""
        return {SETTINGS[provider]: self.base_url(provider) for provider in PROVIDERS}

    # Scripting

    def add(self, provider: str, cnpj: str, payload: dict) -> None:
        with self._lock:
            self.companies[provider][cnpj] = payload

    def fail(self, provider: str, mode: str, *, cnpj: str | None = None, times: int | None = 1,
             retry_after: float | None = 60, retry_after_date: bool = False, header: Any = _DEFAULT_HEADER,
             hang: float = 5.0, status: int = 500, body: Any = None, headers: dict[str, str] | None = None,
             message: str = "Timeout") -> None:
        """Fail the next `times` requests to `provider` (for `cnpj` only, if given; `times=None`: all of them)."""
        if mode not in MODES:
            raise ValueError(f"unknown failure mode {mode!r}")
        failure = Failure(mode, cnpj=cnpj, remaining=times, retry_after=retry_after,
                          retry_after_date=retry_after_date, header=header, hang=hang, status=status, body=body,
                          headers=dict(headers or {}), message=message)
        with self._lock:
            self._failures[provider].append(failure)

    def count(self, provider: str, cnpj: str | None = None) -> int:
        """Company requests `provider` received (for `cnpj`, if given)."""
        with self._lock:
            return sum(1 for r in self.requests
                       if r.provider == provider and r.cnpj is not None and (cnpj is None or r.cnpj == cnpj))

    def counts(self) -> dict[str, int]:
        return {provider: self.count(provider) for provider in PROVIDERS}

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            for queue in self._failures.values():
                queue.clear()

    # Serving

    def _route(self, path: str) -> tuple[str | None, str | None]:
        if path == "/minhareceita/updated":
            return "minhareceita", None
        for provider, pattern in ROUTES.items():
            match = pattern.match(path)
            if match:
                return provider, match.group("cnpj")
        return None, None

    def _take_failure(self, provider: str, cnpj: str) -> Failure | None:
        queue = self._failures[provider]
        for failure in list(queue):
            if failure.cnpj is not None and failure.cnpj != cnpj:
                continue
            if failure.remaining is not None:
                failure.remaining -= 1
                if failure.remaining <= 0:
                    queue.remove(failure)
            return failure
        return None

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path.split("?", 1)[0]
        provider, cnpj = self._route(path)
        with self._lock:
            if provider is not None:
                self.requests.append(Received(provider, path, cnpj, {k.lower(): v for k, v in handler.headers.items()},
                                              time.monotonic()))
            failure = self._take_failure(provider, cnpj) if provider and cnpj else None
            payload = self.companies[provider].get(cnpj) if provider and cnpj else None
        try:
            if provider is None:
                self._send(handler, 404, {"message": f"Unknown path {path}"})
            elif cnpj is None:
                self._send(handler, 200, {"message": self.updated})
            elif failure is not None:
                self._fail(handler, provider, cnpj, failure)
            elif not CANONICAL.match(cnpj) or (not self.alphanumeric[provider] and not cnpj.isdigit()):
                self._invalid(handler, provider, cnpj)
            elif payload is None:
                self._not_found(handler, provider, cnpj)
            else:
                self._send(handler, 200, payload)
        except OSError:
            handler.close_connection = True

    def _send(self, handler, status: int, body: Any, headers: dict[str, str] | None = None,
              content_type: str = "application/json; charset=utf-8") -> None:
        data = body if isinstance(body, bytes) else (
            body.encode() if isinstance(body, str) else json.dumps(body, ensure_ascii=False).encode())
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)
        handler.wfile.flush()

    @staticmethod
    def _masked(cnpj: str) -> str:
        return f"{cnpj[:2]}.{cnpj[2:5]}.{cnpj[5:8]}/{cnpj[8:12]}-{cnpj[12:]}" if len(cnpj) == 14 else cnpj

    def _not_found(self, handler, provider: str, cnpj: str) -> None:
        if provider == "receitaws":
            self._send(handler, 200, self.errors["receitaws_not_found"])
        elif provider == "cnpjws":
            self._send(handler, 404, {"status": 404, "titulo": "Não Encontrado",
                                      "detalhes": "CNPJ não encontrado na base de dados", "validacao": []})
        else:
            body = dict(self.errors["BrasilAPI_404" if provider == "brasilapi" else "minhareceita_404"])
            body["message"] = f"CNPJ {self._masked(cnpj)} não encontrado."
            self._send(handler, 404, body)

    def _invalid(self, handler, provider: str, cnpj: str) -> None:
        if provider == "receitaws":
            self._send(handler, 200, self.errors["receitaws_invalid"])
        elif provider == "cnpjws":
            self._send(handler, 400, {"status": 400, "titulo": "Requisição inválida", "detalhes": "CNPJ inválido",
                                      "validacao": []})
        else:
            body = dict(self.errors["BrasilAPI_400" if provider == "brasilapi" else "minhareceita_400"])
            body["message"] = f"CNPJ {cnpj} inválido."
            self._send(handler, 400, body)

    def _fail(self, handler, provider: str, cnpj: str, failure: Failure) -> None:
        mode = failure.mode
        if mode == NOT_FOUND:
            self._not_found(handler, provider, cnpj)
        elif mode == INVALID:
            self._invalid(handler, provider, cnpj)
        elif mode == RATE_LIMIT:
            self._rate_limited(handler, provider, failure)
        elif mode == SERVER_ERROR:
            body = self.errors["BrasilAPI_500_upstream_down"] if provider == "brasilapi" else {
                "message": "Internal Server Error"}
            self._send(handler, 500, body, failure.headers)
        elif mode == TIMEOUT:
            self._stopping.wait(failure.hang)
            handler.close_connection = True
        elif mode == RECEITAWS_ERROR:
            self._send(handler, 200, {"status": "ERROR", "message": failure.message})
        elif mode == NON_JSON:
            self._send(handler, 200, "<html><body>Bad gateway</body></html>", content_type="text/html")
        else:
            self._send(handler, failure.status, failure.body if failure.body is not None else {}, failure.headers)

    def _rate_limited(self, handler, provider: str, failure: Failure) -> None:
        seconds = failure.retry_after or 0
        headers = dict(failure.headers)
        if failure.header is _DEFAULT_HEADER:
            if failure.retry_after is not None:
                headers["Retry-After"] = (
                    format_datetime(datetime.now(UTC) + timedelta(seconds=seconds), usegmt=True)
                    if failure.retry_after_date else str(int(seconds)))
        elif failure.header is not None:
            headers["Retry-After"] = str(failure.header)
        if provider == "cnpjws":
            release = datetime.now(timezone(timedelta(hours=-3))) + timedelta(seconds=seconds)
            body = dict(self.errors["cnpjws_429"])
            body["detalhes"] = ("Excedido o limite máximo de 3 consultas por minuto. Liberação ocorrerá em "
                                + release.strftime("%a %b %d %Y %H:%M:%S GMT-0300") + " (Brasilia Standard Time)")
            headers.setdefault("x-ratelimit-limit", "3")
            self._send(handler, 429, body, headers)
        elif provider == "brasilapi":
            headers.setdefault("x-vercel-mitigated", "deny")
            self._send(handler, 429, "Too Many Requests\nToo Many Requests\ngru1::fake", headers,
                       content_type="text/plain; charset=utf-8")
        elif provider == "receitaws":
            self._send(handler, 429, {"status": "ERROR", "message": "Too many requests, please try again later."},
                       headers)
        else:
            self._send(handler, 429, "Too Many Requests", headers, content_type="text/plain; charset=utf-8")
