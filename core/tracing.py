"""Tracing (OpenTelemetry), opt-in: on when OTEL_EXPORTER_OTLP_ENDPOINT is set, otherwise nothing of the SDK is
imported and `tracer` stays None (the hot paths test that and do nothing else).

`tracing_init` runs once per process, after the fork (config.asgi/config.wsgi in each web worker, Celery's
worker_init/worker_process_init in config.celery): a TracerProvider exporting OTLP over HTTP/protobuf in batches
(the standard OTEL_EXPORTER_OTLP_* variables apply), and the libraries instrumented: Django, psycopg (Django's
connections and the async pool's), Redis, httpx (the provider calls) and Celery (a task's spans continue the trace
of whatever queued it: the trace context travels in the message headers, like the request id in
core.observability). The ASGI paths that bypass Django (/v1, direct chat sends and streams) get their server
span from `asgi_traced`. The provider calls' spans follow the GenAI conventions: chat.providers.telemetry.
"""

from __future__ import annotations

import os
from typing import Any

# The active tracer when tracing is on in this process, else None.
tracer: Any = None
_provider: Any = None
_pid: int | None = None
_instrumentors: list[Any] = []

# The setting OpenTelemetry's GenAI instrumentations read: prompt and answer text go into spans only when "true".
CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"


def tracing_wanted() -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip())


def content_captured() -> bool:
    return os.environ.get(CAPTURE_CONTENT_ENV, "").strip().lower() == "true"


def tracing_init(*, service: str, exporter: Any = None, django: bool = True) -> bool:
    """Install the tracer provider and instrument the libraries, once per process; True when tracing is on.
    `service` is the default of OTEL_SERVICE_NAME (prumo-web, prumo-worker). `exporter` (tests, the benchmark)
    replaces the OTLP exporter and exports each span as it ends."""
    global tracer, _provider, _pid
    if _pid == os.getpid():
        return tracer is not None
    if exporter is None and not tracing_wanted():
        return False
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processor = BatchSpanProcessor(OTLPSpanExporter())
    else:
        processor = SimpleSpanProcessor(exporter)
    provider = TracerProvider(resource=Resource.create(
        {"service.name": os.environ.get("OTEL_SERVICE_NAME", "").strip() or service}))
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    _instrument(provider, django=django)
    tracer = trace.get_tracer("prumo", tracer_provider=provider)
    _provider, _pid = provider, os.getpid()
    return True


def _instrument(provider, *, django: bool) -> None:
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    instrumentors = [RedisInstrumentor(), HTTPXClientInstrumentor(), CeleryInstrumentor(), PsycopgInstrumentor()]
    if django:
        from opentelemetry.instrumentation.django import DjangoInstrumentor

        instrumentors.append(DjangoInstrumentor())  # adds its middleware: before Django loads the middleware
    for instrumentor in instrumentors:
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=provider)
            _instrumentors.append(instrumentor)


def tracing_stop() -> None:
    """Undo `tracing_init` in this process (tests): the libraries uninstrumented, `tracer` None. OpenTelemetry's
    global provider stays set (the API allows one per process), but nothing uses it any more."""
    global tracer, _provider, _pid
    while _instrumentors:
        _instrumentors.pop().uninstrument()
    tracer, _provider, _pid = None, None, None


def request_id_tag(request_id: str) -> None:
    """Name the request id (the one log lines and the 500 page show) on the current span: from a log line to its
    trace and back."""
    if tracer is not None:
        from opentelemetry import trace

        trace.get_current_span().set_attribute("prumo.request_id", request_id)


def asgi_traced(application):
    """`application` with a server span per HTTP request when tracing is on (per message spans left out: one
    span per chunk of a stream is noise), else `application` itself."""
    if tracer is None:
        return application
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    return OpenTelemetryMiddleware(application, exclude_spans=["receive", "send"], tracer_provider=_provider)


class PsycopgInstrumentor:
    """psycopg 3's connections (sync and async, pooled or not) with a span per statement, as
    opentelemetry-instrumentation-psycopg does it, on the dbapi instrumentation of the same release: that package's
    newest release (0.66b1) pins an older opentelemetry-instrumentation than the rest of the set (0.66b2)."""

    SYSTEM = "postgresql"
    ATTRIBUTES = {"database": "info.dbname", "port": "info.port", "host": "info.host", "user": "info.user"}
    is_instrumented_by_opentelemetry = False

    def __init__(self) -> None:
        self._originals: dict[type, classmethod] = {}

    def instrument(self, *, tracer_provider=None) -> None:
        import psycopg
        from opentelemetry.instrumentation import dbapi

        for target, integration in ((psycopg.Connection, _sync_integration()),
                                    (psycopg.AsyncConnection, _async_integration())):
            # The class's own `connect` (a classmethod): dbapi.unwrap_connect would put back a method bound to this
            # class, and subclasses (tests count statements with one) would then make instances of this class.
            self._originals[target] = target.__dict__["connect"]
            dbapi.wrap_connect(__name__, target, "connect", self.SYSTEM, self.ATTRIBUTES,
                               tracer_provider=tracer_provider, db_api_integration_factory=integration)
        self.is_instrumented_by_opentelemetry = True

    def uninstrument(self) -> None:
        while self._originals:
            target, original = self._originals.popitem()
            target.connect = original
        self.is_instrumented_by_opentelemetry = False


def _cursor_tracer(db_api):
    from opentelemetry.instrumentation import dbapi
    from psycopg.sql import Composable

    class CursorTracer(dbapi.CursorTracer):
        """Statements composed with psycopg.sql (send_direct's) named by their text."""

        def get_operation_name(self, cursor, args):
            if args and isinstance(args[0], Composable):
                words = args[0].as_string(cursor).split()
                return words[0] if words else ""
            return super().get_operation_name(cursor, args)

        def get_statement(self, cursor, args):
            if args and isinstance(args[0], Composable):
                return args[0].as_string(cursor)
            return super().get_statement(cursor, args)

    return CursorTracer(db_api)


def _traced_cursor(db_api, base):
    traced = _cursor_tracer(db_api)

    class TracedCursor(base):
        def execute(self, *args, **kwargs):
            return traced.traced_execution(self, super().execute, *args, **kwargs)

        def executemany(self, *args, **kwargs):
            return traced.traced_execution(self, super().executemany, *args, **kwargs)

    return TracedCursor


def _traced_async_cursor(db_api, base):
    traced = _cursor_tracer(db_api)

    class TracedAsyncCursor(base):
        async def execute(self, *args, **kwargs):
            return await traced.traced_execution_async(self, super().execute, *args, **kwargs)

        async def executemany(self, *args, **kwargs):
            return await traced.traced_execution_async(self, super().executemany, *args, **kwargs)

    return TracedAsyncCursor


def _sync_integration():
    import psycopg
    from opentelemetry.instrumentation import dbapi

    class Integration(dbapi.DatabaseApiIntegration):
        def wrapped_connection(self, connect_method, args, kwargs):
            kwargs["cursor_factory"] = _traced_cursor(self, kwargs.pop("cursor_factory", None) or psycopg.Cursor)
            connection = connect_method(*args, **kwargs)
            self.get_connection_attributes(connection)
            return connection

    return Integration


def _async_integration():
    import psycopg
    from opentelemetry.instrumentation import dbapi

    class Integration(dbapi.DatabaseApiIntegration):
        async def wrapped_connection(self, connect_method, args, kwargs):
            base = kwargs.pop("cursor_factory", None) or psycopg.AsyncCursor
            kwargs["cursor_factory"] = _traced_async_cursor(self, base)
            connection = await connect_method(*args, **kwargs)
            self.get_connection_attributes(connection)
            return connection

    return Integration
