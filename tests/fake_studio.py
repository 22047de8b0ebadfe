"""A local fake of OpenAI's image API (`POST /v1/images/generations`), the real wire format.

It answers with `n` real PNGs (base64 in `b64_json`, sized as asked), checks the bearer key, records what it
received, and fails the next request(s) the ways OpenAI fails when told: `fail_next(status, code=..., message=...,
retry_after=...)` with OpenAI's error envelope, or `hang_next(seconds)` (no answer before a read timeout).
`max_running` is the most requests it ever served at once (the Studio's concurrency caps are counted here).

    with FakeOpenAIImages() as fake:
        settings.LLM_PROVIDERS["openai"] = {"base_url": fake.url, "api_key": fake.key}
"""

from __future__ import annotations

import base64
import json
import struct
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def png(width: int, height: int) -> bytes:
    """A valid grey PNG of `width` × `height`."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@dataclass
class Failure:
    status: int = 0
    code: str = ""
    message: str = ""
    retry_after: float | None = None
    hang: float = 0.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class FakeOpenAIImages:
    def __init__(self, *, key: str = "sk-fake-images", delay: float = 0.0):
        self.key = key
        self.delay = delay  # seconds each image request takes (to see concurrency)
        self.requests: list[dict] = []
        self.failures: deque[Failure] = deque()
        self.running = 0
        self.max_running = 0
        self._lock = threading.Lock()
        self._server: _Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def fail_next(self, status: int, *, code: str = "", message: str = "", retry_after: float | None = None,
                  times: int = 1) -> None:
        for _ in range(times):
            self.failures.append(Failure(status=status, code=code, message=message, retry_after=retry_after))

    def hang_next(self, seconds: float) -> None:
        self.failures.append(Failure(hang=seconds))

    def start(self) -> FakeOpenAIImages:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                with fake._lock:
                    fake.requests.append({"path": self.path, "body": body,
                                          "authorization": self.headers.get("Authorization", "")})
                    failure = fake.failures.popleft() if fake.failures else None
                    fake.running += 1
                    fake.max_running = max(fake.max_running, fake.running)
                try:
                    self._answer(body, failure)
                finally:
                    with fake._lock:
                        fake.running -= 1

            def _answer(self, body: dict, failure: Failure | None) -> None:
                if self.path != "/v1/images/generations":
                    return self._error(404, "Unknown path.", "invalid_request_error", "not_found")
                if self.headers.get("Authorization") != f"Bearer {fake.key}":
                    return self._error(401, "Incorrect API key provided.", "invalid_request_error",
                                       "invalid_api_key")
                if failure is not None and failure.hang:
                    time.sleep(failure.hang)
                    self.close_connection = True
                    return None
                if failure is not None:
                    return self._error(failure.status, failure.message or "The server had an error.",
                                       "invalid_request_error" if failure.status < 500 else "server_error",
                                       failure.code, retry_after=failure.retry_after)
                if fake.delay:
                    time.sleep(fake.delay)
                width, _, height = str(body.get("size", "1024x1024")).partition("x")
                image = base64.b64encode(png(int(width) // 64, int(height) // 64)).decode()
                data = [{"b64_json": image, "revised_prompt": body.get("prompt", "")}
                        for _ in range(int(body.get("n", 1)))]
                self._json(200, {"created": int(time.time()), "data": data,
                                 "usage": {"total_tokens": 100, "input_tokens": 50, "output_tokens": 50}})
                return None

            def _error(self, status: int, message: str, type_: str, code: str, *,
                       retry_after: float | None = None) -> None:
                headers = {"retry-after": str(retry_after)} if retry_after is not None else {}
                self._json(status, {"error": {"message": message, "type": type_, "param": None, "code": code}},
                           headers)

            def _json(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        self._server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeOpenAIImages:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
