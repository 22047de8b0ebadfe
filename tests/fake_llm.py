"""Local fakes of the LLM providers' HTTP APIs, one class per wire format.

Each fake is a real HTTP/1.1 server on 127.0.0.1 (chunked, keep-alive), so the adapters'
SDKs and HTTP clients run unchanged against it: `FakeOpenAI` (also DeepSeek), `FakeAnthropic`,
`FakeGemini` and `FakeOllama`. A fake answers every request with its scripted `Answer`
(text pieces, token counts, finish reason) in the provider's own stream format, records
what it received in `requests`, and can be told to fail the next request(s) the ways real
providers fail: `fake.fail_next(AUTH)`, `RATE_LIMIT` (with `retry-after`), `SERVER_ERROR`,
`HANG_BEFORE` / `HANG_AFTER_FIRST` (silence longer than a read timeout), `MALFORMED`,
`CUT` (the connection closes mid-answer), `STREAM_ERROR` (an error event after the first
chunk, as when a provider is overloaded mid-answer) or `STATUS` (any status and body).
`GET` on a fake's model list (`models_path`) answers a one-model list (how a key is tested).

An answer can call tools: `fake.tool_call_next("get_weather", {"city": "Lisboa"})` makes the
next answer one call (finish "tool_calls"), streamed as the provider streams calls (OpenAI's
`delta.tool_calls` and Anthropic's `input_json_delta` in several argument fragments, Gemini's
whole `functionCall` part, Ollama's `message.tool_calls`); `fake.answer_next(Answer(...,
tool_calls=[FakeToolCall(...), ...]))` scripts any one answer.

    with FakeOpenAI(Answer(["Hello", " world"], input_tokens=9, output_tokens=2)) as fake:
        ...  # point the adapter at fake.url; then fake.requests[-1].body["model"]

Whatever the protocol, an adapter that reads a fake's stream correctly reports
`Usage(answer.input_tokens, answer.output_tokens)`: each fake splits the counts the way its
provider does (Anthropic's cache reads apart from `input_tokens`, Gemini's thinking tokens
apart from `candidatesTokenCount`).
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

# Failure modes for `fail_next`.
AUTH = "auth"  # 401 with the provider's error body
RATE_LIMIT = "rate_limit"  # 429 with a `retry-after` header
SERVER_ERROR = "server_error"  # 500
HANG_BEFORE = "hang_before"  # no bytes at all (not even headers) for `hang` seconds, then close
HANG_AFTER_FIRST = "hang_after_first"  # headers and the first text chunk, then silence
MALFORMED = "malformed"  # the first text chunk, then a chunk that is not valid JSON
CUT = "cut"  # some text chunks, then the connection closes without the final event
STREAM_ERROR = "stream_error"  # the first text chunk, then the provider's in-stream error event
STATUS = "status"  # any `status`, `body` and `headers`
MODES = frozenset({AUTH, RATE_LIMIT, SERVER_ERROR, HANG_BEFORE, HANG_AFTER_FIRST, MALFORMED, CUT, STREAM_ERROR,
                   STATUS})

ERROR_STATUS = {AUTH: 401, RATE_LIMIT: 429, SERVER_ERROR: 500}
# Failures that send the beginning of the answer (and so use up an `answer_next`).
PARTIAL_ANSWERS = frozenset({HANG_AFTER_FIRST, MALFORMED, CUT, STREAM_ERROR})


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class FakeToolCall:
    """A function call a fake's answer makes."""

    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=_call_id)  # sent by the providers that name calls (OpenAI, Anthropic)

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments)


def _fragments(text: str, count: int = 3) -> list[str]:
    """`text` in up to `count` consecutive pieces, as providers stream a call's arguments."""
    size = max(1, -(-len(text) // count))
    return [text[start:start + size] for start in range(0, len(text), size)] or [""]


@dataclass
class Answer:
    """What a fake answers: `pieces` streamed one chunk each, then `tool_calls` (if any), usage and finish.

    `finish` is either a normalized reason ("stop", "length", "content_filter", "tool_calls"),
    which each fake translates into its provider's own word, or a provider's own word, sent as is.
    """

    pieces: list[str] = field(default_factory=lambda: ["Hello", " from", " the", " fake", "."])
    input_tokens: int = 11
    output_tokens: int = 5
    finish: str = "stop"
    cache_read_tokens: int = 0  # part of input_tokens that came from a prompt cache
    reasoning_tokens: int = 0  # part of output_tokens spent thinking
    tool_calls: list[FakeToolCall] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@dataclass
class Failure:
    mode: str
    retry_after: float | None = None
    hang: float = 5.0
    cut_after: int | None = None  # text chunks sent before a CUT; default half of them (at least one)
    status: int = 500
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Received:
    """One request as the fake saw it; `body` is the decoded JSON (or the raw text)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: Any
    at: float


@dataclass
class Stream:
    """A protocol's answer as frames: before the text, one per text piece, after it."""

    head: list[bytes]
    text: list[bytes]
    tail: list[bytes]
    malformed: bytes
    error: bytes


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 2048  # hundreds of streams connecting at once (benchmarks)
    allow_reuse_address = True

    connections = 0  # accepted so far: keep-alive tests count them

    def process_request(self, request, client_address) -> None:
        self.connections += 1
        super().process_request(request, client_address)

    def handle_error(self, request, client_address) -> None:
        # A client that timed out or gave up resets its connection: normal here, not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Disconnected(Exception):
    """The client went away (it timed out, or stopped reading)."""


class FakeProvider:
    """Shared server, recording and failure logic; subclasses speak one protocol."""

    name = "fake"
    content_type = "text/event-stream; charset=utf-8"
    FINISH: dict[str, str] = {}  # normalized reason -> the provider's own word

    def __init__(self, answer: Answer | None = None, *, chunk_delay: float = 0.0):
        self.answer = answer or Answer()
        self.chunk_delay = chunk_delay  # seconds between chunks (streaming benchmarks)
        self.requests: list[Received] = []
        self._failures: deque[Failure] = deque()
        self._answers: deque[Answer] = deque()  # answers for the next requests, before `answer`
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # Lifecycle

    def start(self) -> FakeProvider:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 60  # an idle keep-alive connection is dropped after a minute
            # Small writes (headers, then each chunk) must not wait for delayed ACKs (~40 ms each).
            disable_nagle_algorithm = True

            def do_POST(self):
                fake._handle(self)

            def do_GET(self):
                fake._handle(self)

            def log_message(self, *args):
                pass

        self._stopping.clear()
        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"fake-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; hanging answers wake up and close their connections."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # Scripting

    def fail_next(self, mode: str, *, times: int = 1, retry_after: float | None = 2, hang: float = 5.0,
                  cut_after: int | None = None, status: int = 500, body: Any = None,
                  headers: dict[str, str] | None = None) -> None:
        """Fail the next `times` requests in `mode` (one of the module's failure constants)."""
        if mode not in MODES:
            raise ValueError(f"unknown failure mode {mode!r}")
        failure = Failure(mode, retry_after=retry_after, hang=hang, cut_after=cut_after, status=status, body=body,
                          headers=dict(headers or {}))
        with self._lock:
            self._failures.extend([failure] * times)

    def answer_next(self, answer: Answer) -> None:
        """Answer the next request with `answer` (or its beginning, when `fail_next` cuts it), then go back
        to `self.answer`. A request failed before any answer leaves it for the one after."""
        with self._lock:
            self._answers.append(answer)

    def tool_call_next(self, name: str, arguments: dict[str, Any], *, call_id: str | None = None,
                       pieces: list[str] | None = None) -> FakeToolCall:
        """Make the next answer a call of the function `name` (after the text `pieces`, if any)."""
        call = FakeToolCall(name, arguments, call_id or _call_id())
        self.answer_next(Answer(pieces=list(pieces or []), input_tokens=self.answer.input_tokens,
                                output_tokens=self.answer.output_tokens, finish="tool_calls", tool_calls=[call]))
        return call

    @property
    def connections(self) -> int:
        """TCP connections accepted since the server started."""
        return self._server.connections if self._server is not None else 0

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    @property
    def last(self) -> Received:
        with self._lock:
            return self.requests[-1]

    def reset(self) -> None:
        """Forget received requests, pending failures and scripted answers."""
        with self._lock:
            self.requests.clear()
            self._failures.clear()
            self._answers.clear()

    # Protocol (subclasses)

    def route(self, path: str) -> dict | None:
        """Path parameters when this fake serves `path`, else None."""
        raise NotImplementedError

    models_path = ""  # `GET` here lists the models (how a key is tested); `fail_next(AUTH)` refuses it

    def wants_stream(self, request: Received, params: dict) -> bool:
        return bool(isinstance(request.body, dict) and request.body.get("stream"))

    def stream(self, request: Received, params: dict, answer: Answer) -> Stream:
        raise NotImplementedError

    def complete(self, request: Received, params: dict, answer: Answer) -> dict:
        """The non-streamed answer."""
        raise NotImplementedError

    def error_body(self, status: int, message: str) -> Any:
        raise NotImplementedError

    def error_headers(self, failure: Failure) -> dict[str, str]:
        if failure.mode == RATE_LIMIT and failure.retry_after is not None:
            return {"retry-after": _number(failure.retry_after)}
        return {}

    def finish(self, answer: Answer) -> str:
        return self.FINISH.get(answer.finish, answer.finish)

    def model_of(self, request: Received, params: dict) -> str:
        body = request.body if isinstance(request.body, dict) else {}
        return params.get("model") or body.get("model") or "fake-model"

    # Serving

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length).decode() if length else ""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        request = Received(
            method=handler.command, path=parts.path, query={k: v[-1] for k, v in parse_qs(parts.query).items()},
            headers={key.lower(): value for key, value in handler.headers.items()}, body=body, at=time.monotonic(),
        )
        with self._lock:
            self.requests.append(request)
            failure = self._failures.popleft() if self._failures else None
            # A failure before any answer (an error status, silence) leaves the scripted answer for the next request.
            answered = failure is None or failure.mode in PARTIAL_ANSWERS
            answer = self._answers.popleft() if self._answers and answered else self.answer
        try:
            self._answer(handler, request, failure, answer)
        except (_Disconnected, OSError):
            handler.close_connection = True

    def _answer(self, handler, request: Received, failure: Failure | None, answer: Answer) -> None:
        if request.method == "GET" and self.models_path and request.path.endswith(self.models_path):
            if failure is not None and failure.mode in ERROR_STATUS:
                status = ERROR_STATUS[failure.mode]
                self._send_json(handler, status, self.error_body(status, "Invalid API key."))
            else:
                self._send_json(handler, 200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
            return
        params = self.route(request.path)
        if params is None:
            self._send_json(handler, 404, self.error_body(404, f"Unknown path {request.path}"))
            return
        if failure is not None and failure.mode in ERROR_STATUS:
            status = ERROR_STATUS[failure.mode]
            message = {401: "Invalid API key.", 429: "Rate limit reached.", 500: "Internal server error."}[status]
            self._send_json(handler, status, self.error_body(status, message), self.error_headers(failure))
            return
        if failure is not None and failure.mode == STATUS:
            body = failure.body if failure.body is not None else self.error_body(failure.status, "Scripted error.")
            self._send_json(handler, failure.status, body, failure.headers)
            return
        if failure is not None and failure.mode == HANG_BEFORE:
            self._stopping.wait(failure.hang)
            handler.close_connection = True
            return
        if not self.wants_stream(request, params):
            self._send_json(handler, 200, self.complete(request, params, answer))
            return
        self._stream(handler, self.stream(request, params, answer), failure)

    def _stream(self, handler, stream: Stream, failure: Failure | None) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", self.content_type)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.send_header("Cache-Control", "no-cache")
        handler.end_headers()
        mode = failure.mode if failure else None
        for frame in stream.head:
            self._write(handler, frame)
        for index, frame in enumerate(stream.text):
            if mode == CUT and index >= self._cut_after(failure, stream):
                handler.wfile.flush()
                handler.close_connection = True  # no terminating chunk: an incomplete body
                return
            if index:
                self._pause()
            self._write(handler, frame)
            if index == 0 and mode == HANG_AFTER_FIRST:
                self._stopping.wait(failure.hang)
                handler.close_connection = True
                return
            if index == 0 and mode in (MALFORMED, STREAM_ERROR):
                self._write(handler, stream.malformed if mode == MALFORMED else stream.error)
                self._end(handler)
                return
        if mode == CUT:
            handler.close_connection = True
            return
        for frame in stream.tail:
            self._pause()
            self._write(handler, frame)
        self._end(handler)

    @staticmethod
    def _cut_after(failure: Failure, stream: Stream) -> int:
        if failure.cut_after is not None:
            return failure.cut_after
        return max(1, len(stream.text) // 2)

    def _pause(self) -> None:
        if self.chunk_delay:
            time.sleep(self.chunk_delay)

    @staticmethod
    def _write(handler, data: bytes) -> None:
        try:
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            handler.wfile.flush()
        except OSError as error:
            raise _Disconnected from error

    @staticmethod
    def _end(handler) -> None:
        try:
            handler.wfile.write(b"0\r\n\r\n")
            handler.wfile.flush()
        except OSError as error:
            raise _Disconnected from error

    @staticmethod
    def _send_json(handler, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)
        handler.wfile.flush()


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _sse(data: Any, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\n" if event else "").encode() + f"data: {payload}\n\n".encode()


class FakeOpenAI(FakeProvider):
    """`POST …/chat/completions` (OpenAI, DeepSeek): SSE `data:` chunks, keep-alive comments, `[DONE]`."""

    name = "openai"
    FINISH = {"stop": "stop", "length": "length", "content_filter": "content_filter", "tool_calls": "tool_calls"}
    models_path = "/models"

    def route(self, path: str) -> dict | None:
        return {} if path.endswith("/chat/completions") else None

    def error_body(self, status: int, message: str) -> Any:
        kind, code = {
            401: ("invalid_request_error", "invalid_api_key"), 429: ("requests", "rate_limit_exceeded"),
            404: ("invalid_request_error", "model_not_found"),
        }.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}

    def _usage(self, answer: Answer) -> dict:
        return {
            "prompt_tokens": answer.input_tokens, "completion_tokens": answer.output_tokens,
            "total_tokens": answer.input_tokens + answer.output_tokens,
            "prompt_tokens_details": {"cached_tokens": answer.cache_read_tokens},
            "completion_tokens_details": {"reasoning_tokens": answer.reasoning_tokens},
        }

    def stream(self, request: Received, params: dict, answer: Answer) -> Stream:
        body = request.body
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        base = {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": self.model_of(request, params), "system_fingerprint": "fp_fake"}
        extra = {"usage": None} if include_usage else {}

        def chunk(delta: dict, finish_reason: str | None = None) -> dict:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return {**base, "choices": [choice], **extra}

        keep_alive = b": keep-alive\n\n"
        text = [(keep_alive if index % 2 else b"") + _sse(chunk({"content": piece}))
                for index, piece in enumerate(answer.pieces)]
        for position, call in enumerate(answer.tool_calls):
            # The first fragment names the call; the next ones carry pieces of its arguments.
            text.append(_sse(chunk({"tool_calls": [{"index": position, "id": call.id, "type": "function",
                                                   "function": {"name": call.name, "arguments": ""}}]})))
            text += [_sse(chunk({"tool_calls": [{"index": position, "function": {"arguments": fragment}}]}))
                     for fragment in _fragments(call.arguments_json)]
        tail = [_sse(chunk({}, self.finish(answer)))]
        if include_usage:
            tail.append(keep_alive + _sse({**base, "choices": [], "usage": self._usage(answer)}))
        tail.append(b"data: [DONE]\n\n")
        return Stream(
            head=[_sse(chunk({"role": "assistant", "content": "", "refusal": None}))],
            text=text, tail=tail, malformed=b'data: {"id": "chatcmpl-broken", "choices": [{"delta": {"content\n\n',
            error=_sse(self.error_body(500, "The server had an error while processing your request.")),
        )

    @staticmethod
    def _message(answer: Answer) -> dict:
        message = {"role": "assistant", "content": answer.text, "refusal": None}
        if answer.tool_calls:
            message["content"] = answer.text or None
            message["tool_calls"] = [{"id": call.id, "type": "function",
                                      "function": {"name": call.name, "arguments": call.arguments_json}}
                                     for call in answer.tool_calls]
        return message

    def complete(self, request: Received, params: dict, answer: Answer) -> dict:
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
            "model": self.model_of(request, params),
            "choices": [{"index": 0, "message": self._message(answer), "logprobs": None,
                         "finish_reason": self.finish(answer)}],
            "usage": self._usage(answer),
        }


class FakeAnthropic(FakeProvider):
    """`POST /v1/messages`: SSE with `event:` lines, from message_start to message_stop."""

    name = "anthropic"
    models_path = "/v1/models"
    FINISH = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}

    def route(self, path: str) -> dict | None:
        return {} if path == "/v1/messages" else None

    def error_body(self, status: int, message: str) -> Any:
        kind = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                529: "overloaded_error"}.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message},
                "request_id": f"req_{uuid.uuid4().hex[:24]}"}

    def error_headers(self, failure: Failure) -> dict[str, str]:
        return {"request-id": f"req_{uuid.uuid4().hex[:24]}", **super().error_headers(failure)}

    def _message(self, request: Received, params: dict, answer: Answer, *, content: list, stop_reason,
                 output_tokens: int) -> dict:
        return {
            "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "content": content,
            "model": self.model_of(request, params), "stop_reason": stop_reason, "stop_sequence": None,
            "usage": {"input_tokens": answer.input_tokens - answer.cache_read_tokens,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": answer.cache_read_tokens,
                      "output_tokens": output_tokens, "service_tier": "standard"},
        }

    def stream(self, request: Received, params: dict, answer: Answer) -> Stream:
        start = self._message(request, params, answer, content=[], stop_reason=None, output_tokens=1)
        text = [_sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
                     "content_block_delta") for piece in answer.pieces]
        head = [_sse({"type": "message_start", "message": start}, "message_start")]
        # A text block first (index 0), unless a tool call answer has no text; then one block per call.
        if answer.pieces or not answer.tool_calls:
            head.append(_sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                             "content_block_start"))
            close_text = [_sse({"type": "content_block_stop", "index": 0}, "content_block_stop")]
        else:
            close_text = []
        head.append(_sse({"type": "ping"}, "ping"))
        tail = [
            _sse({"type": "message_delta", "delta": {"stop_reason": self.finish(answer), "stop_sequence": None},
                  "usage": {"output_tokens": answer.output_tokens}}, "message_delta"),
            _sse({"type": "message_stop"}, "message_stop"),
        ]
        if answer.tool_calls:
            text += close_text
            for index, call in enumerate(answer.tool_calls, start=len(close_text)):
                text.append(_sse({"type": "content_block_start", "index": index, "content_block": {
                    "type": "tool_use", "id": call.id, "name": call.name, "input": {}}}, "content_block_start"))
                # The first input_json_delta is empty, and the only one of a call without arguments.
                fragments = ["", *_fragments(call.arguments_json)] if call.arguments else [""]
                text += [_sse({"type": "content_block_delta", "index": index,
                               "delta": {"type": "input_json_delta", "partial_json": fragment}}, "content_block_delta")
                         for fragment in fragments]
                text.append(_sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
        else:
            tail = close_text + tail
        return Stream(
            head=head, text=text, tail=tail,
            malformed=b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, "delta": \n\n',
            error=_sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "error"),
        )

    def complete(self, request: Received, params: dict, answer: Answer) -> dict:
        content = [{"type": "text", "text": answer.text}] if answer.text or not answer.tool_calls else []
        content += [{"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}
                    for call in answer.tool_calls]
        return self._message(request, params, answer, content=content, stop_reason=self.finish(answer),
                             output_tokens=answer.output_tokens)


class FakeGemini(FakeProvider):
    """`POST /v1beta/models/<model>:streamGenerateContent?alt=sse` (and `:generateContent`)."""

    name = "gemini"
    content_type = "text/event-stream"
    models_path = "/v1beta/models"
    FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "content_filter": "SAFETY", "tool_calls": "STOP"}
    STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                    429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}

    def route(self, path: str) -> dict | None:
        match = re.fullmatch(r"/v1beta/models/(?P<model>[^/:]+):(?P<method>streamGenerateContent|generateContent)",
                             path)
        return match.groupdict() if match else None

    def wants_stream(self, request: Received, params: dict) -> bool:
        return params["method"] == "streamGenerateContent"

    def error_body(self, status: int, message: str) -> Any:
        error = {"code": status, "message": message, "status": self.STATUS_NAMES.get(status, "UNKNOWN")}
        if status == 429:
            error["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2s"}]
        return {"error": error}

    def _usage(self, answer: Answer, *, final: bool) -> dict:
        usage = {"promptTokenCount": answer.input_tokens}
        if final:
            usage["candidatesTokenCount"] = answer.output_tokens - answer.reasoning_tokens
            if answer.reasoning_tokens:
                usage["thoughtsTokenCount"] = answer.reasoning_tokens
            if answer.cache_read_tokens:
                usage["cachedContentTokenCount"] = answer.cache_read_tokens
            usage["totalTokenCount"] = answer.input_tokens + answer.output_tokens
        return usage

    def _chunk(self, text: str, answer: Answer, *, finish: str | None = None,
               calls: Sequence[FakeToolCall] = ()) -> dict:
        parts = [{"functionCall": {"name": call.name, "args": call.arguments}} for call in calls] or [{"text": text}]
        candidate: dict = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if finish:
            candidate["finishReason"] = finish
        return {"candidates": [candidate], "usageMetadata": self._usage(answer, final=bool(finish)),
                "modelVersion": "fake", "responseId": "fake-response"}

    def stream(self, request: Received, params: dict, answer: Answer) -> Stream:
        text = [_sse(self._chunk(piece, answer)) for piece in answer.pieces]
        tail = [_sse(self._chunk("", answer, finish=self.finish(answer)))]
        if answer.tool_calls:
            # Gemini sends calls whole, without ids, in one chunk that also says STOP.
            text.append(_sse(self._chunk("", answer, finish=self.finish(answer), calls=answer.tool_calls)))
            tail = []
        return Stream(
            head=[],
            text=text,
            tail=tail,
            malformed=b'data: {"candidates": [{"content": {"parts": [{"text": \n\n',
            error=_sse(self.error_body(503, "The model is overloaded. Please try again later.")),
        )

    def complete(self, request: Received, params: dict, answer: Answer) -> dict:
        chunk = self._chunk(answer.text, answer, finish=self.finish(answer), calls=answer.tool_calls)
        if answer.tool_calls and answer.text:
            chunk["candidates"][0]["content"]["parts"].insert(0, {"text": answer.text})
        return chunk


class FakeOllama(FakeProvider):
    """`POST /api/chat`: newline-delimited JSON, the last line `done: true` with the counts."""

    name = "ollama"
    content_type = "application/x-ndjson"
    FINISH = {"stop": "stop", "length": "length", "tool_calls": "stop"}  # Ollama says stop after calls too

    def route(self, path: str) -> dict | None:
        return {} if path == "/api/chat" else None

    def wants_stream(self, request: Received, params: dict) -> bool:
        # Ollama streams unless told not to.
        return not (isinstance(request.body, dict) and request.body.get("stream") is False)

    def error_body(self, status: int, message: str) -> Any:
        return {"error": message}

    def _line(self, request: Received, params: dict, content: str, *, calls: Sequence[FakeToolCall] = (),
              **fields) -> dict:
        message: dict = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = [{"function": {"index": index, "name": call.name, "arguments": call.arguments}}
                                     for index, call in enumerate(calls)]
        return {"model": self.model_of(request, params), "created_at": "2025-01-01T00:00:00.000000Z",
                "message": message, **fields}

    def _final(self, request: Received, params: dict, answer: Answer, content: str) -> dict:
        return self._line(request, params, content, done=True, done_reason=self.finish(answer),
                          total_duration=1_000_000, load_duration=1000, prompt_eval_count=answer.input_tokens,
                          prompt_eval_duration=1000, eval_count=answer.output_tokens, eval_duration=1000)

    def stream(self, request: Received, params: dict, answer: Answer) -> Stream:
        text = [json.dumps(self._line(request, params, piece, done=False)).encode() + b"\n" for piece in answer.pieces]
        if answer.tool_calls:
            # Whole calls, arguments as an object, in one line of their own.
            text.append(json.dumps(self._line(request, params, "", calls=answer.tool_calls, done=False)).encode()
                        + b"\n")
        return Stream(
            head=[],
            text=text,
            tail=[json.dumps(self._final(request, params, answer, "")).encode() + b"\n"],
            malformed=b'{"model": "broken", "message": {"content": \n',
            error=json.dumps({"error": "an error was encountered while running the model"}).encode() + b"\n",
        )

    def complete(self, request: Received, params: dict, answer: Answer) -> dict:
        final = self._final(request, params, answer, answer.text)
        final["message"] = self._line(request, params, answer.text, calls=answer.tool_calls)["message"]
        return final


FAKES: dict[str, type[FakeProvider]] = {
    "openai": FakeOpenAI, "deepseek": FakeOpenAI, "anthropic": FakeAnthropic, "gemini": FakeGemini,
    "ollama": FakeOllama,
}
