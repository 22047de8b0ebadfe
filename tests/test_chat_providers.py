"""Each provider adapter against a local fake of its API: what it sends, what it yields, how it fails.

No database: adapters are built by the registry from settings pointed at the fakes.
"""

from __future__ import annotations

import asyncio
import base64

import pytest

from chat.providers import (
    ChatMessage,
    ChatRequest,
    Finish,
    ImagePart,
    ProviderAdapter,
    ProviderError,
    TextDelta,
    Timeouts,
    Usage,
    adapter_for,
)
from chat.providers.demo import DemoAdapter

from .fake_llm import (
    AUTH,
    CUT,
    FAKES,
    HANG_AFTER_FIRST,
    HANG_BEFORE,
    MALFORMED,
    RATE_LIMIT,
    SERVER_ERROR,
    STATUS,
    STREAM_ERROR,
    Answer,
    FakeProvider,
)

PROVIDERS = ["openai", "deepseek", "anthropic", "gemini", "ollama"]
READ_TIMEOUT = 0.25
PNG = b"\x89PNG\r\n\x1a\nfake-image-bytes"
ANSWER = Answer(pieces=["Olá", ", mundo", "! Tudo", " bem?"], input_tokens=31, output_tokens=9,
                cache_read_tokens=4, reasoning_tokens=3)


def run(adapter: ProviderAdapter, request: ChatRequest) -> tuple[list, ProviderError | None]:
    """All events the adapter yielded, and the ProviderError it raised (if any)."""

    async def consume():
        events: list = []
        async with adapter:
            try:
                async for event in adapter.stream(request):
                    events.append(event)
            except ProviderError as error:
                return events, error
        return events, None

    return asyncio.run(consume())


def texts(events: list) -> list[str]:
    return [event.text for event in events if isinstance(event, TextDelta)]


def chat_request(**overrides) -> ChatRequest:
    fields = {
        "model": "test-model",
        "messages": [
            ChatMessage("system", "Be brief."),
            ChatMessage("user", "Hi"),
            ChatMessage("assistant", "Hello!"),
            ChatMessage("user", "What is in this picture?", images=(ImagePart("image/png", PNG),)),
        ],
        "max_tokens": 64,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["END"],
    }
    return ChatRequest(**{**fields, **overrides})


@pytest.fixture(params=PROVIDERS)
def provider(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def servers():
    """One running fake per protocol for the whole module (starting and stopping them adds up)."""
    running: dict[str, FakeProvider] = {}
    yield running
    for server in running.values():
        server.stop()


@pytest.fixture
def fake(provider, settings, servers) -> FakeProvider:
    """The provider's fake, reset, with the registry's settings pointed at it and short timeouts."""
    fake_class = FAKES[provider]
    server = servers.get(fake_class.name) or servers.setdefault(fake_class.name, fake_class().start())
    server.reset()
    server.answer = ANSWER
    key = "" if provider == "ollama" else "test-key"
    settings.LLM_PROVIDERS = {**settings.LLM_PROVIDERS, provider: {"base_url": server.url, "api_key": key}}
    settings.LLM_READ_TIMEOUT = READ_TIMEOUT
    settings.LLM_CONNECT_TIMEOUT = 1.0
    return server


# What each provider must have received.

def check_openai(received, provider: str = "openai") -> None:
    assert received.path == "/chat/completions"
    assert received.headers["authorization"] == "Bearer test-key"
    body = received.body
    assert body["model"] == "test-model"
    # OpenAI's own API wants max_completion_tokens (reasoning models refuse max_tokens); DeepSeek max_tokens.
    assert body["max_completion_tokens" if provider == "openai" else "max_tokens"] == 64
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert (body["temperature"], body["top_p"], body["stop"]) == (0.2, 0.9, ["END"])
    assert body["messages"][:3] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                    {"role": "assistant", "content": "Hello!"}]
    assert body["messages"][3] == {"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(PNG).decode()}},
    ]}


def check_anthropic(received) -> None:
    assert received.path == "/v1/messages"
    # This SDK version sends the key as a bearer token; older ones used x-api-key.
    assert "test-key" in (received.headers.get("x-api-key"), received.headers.get("authorization", "")[7:])
    assert received.headers["anthropic-version"]
    body = received.body
    assert (body["model"], body["max_tokens"], body["stream"]) == ("test-model", 64, True)
    assert body["system"] == "Be brief."
    assert (body["temperature"], body["top_p"], body["stop_sequences"]) == (0.2, 0.9, ["END"])
    assert [message["role"] for message in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][0] == {"role": "user", "content": "Hi"}
    assert body["messages"][2]["content"] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": base64.b64encode(PNG).decode()}},
        {"type": "text", "text": "What is in this picture?"},
    ]


def check_gemini(received) -> None:
    assert received.path == "/v1beta/models/test-model:streamGenerateContent"
    assert received.query == {"alt": "sse"}
    assert received.headers["x-goog-api-key"] == "test-key"
    body = received.body
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert body["generationConfig"] == {"maxOutputTokens": 64, "temperature": 0.2, "topP": 0.9,
                                        "stopSequences": ["END"]}
    assert [content["role"] for content in body["contents"]] == ["user", "model", "user"]
    assert body["contents"][1] == {"role": "model", "parts": [{"text": "Hello!"}]}
    assert body["contents"][2]["parts"] == [
        {"inline_data": {"mime_type": "image/png", "data": base64.b64encode(PNG).decode()}},
        {"text": "What is in this picture?"},
    ]


def check_ollama(received) -> None:
    assert received.path == "/api/chat"
    assert "authorization" not in received.headers
    body = received.body
    assert (body["model"], body["stream"]) == ("test-model", True)
    assert body["options"] == {"num_predict": 64, "temperature": 0.2, "top_p": 0.9, "stop": ["END"]}
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["messages"][3] == {"role": "user", "content": "What is in this picture?",
                                   "images": [base64.b64encode(PNG).decode()]}


CHECKS = {"openai": check_openai, "deepseek": lambda received: check_openai(received, "deepseek"),
          "anthropic": check_anthropic, "gemini": check_gemini,
          "ollama": check_ollama}


def test_streams_the_answer_then_usage_then_finish(provider, fake):
    events, error = run(adapter_for(provider), chat_request())

    assert error is None
    assert texts(events) == ANSWER.pieces
    assert events[-2:] == [Usage(input_tokens=31, output_tokens=9), Finish("stop")]
    # The model the provider says answered, as its wire format says it (Gemini's `modelVersion`, the others'
    # `model`), for the trace's gen_ai.response.model.
    assert events[-2].model == ("fake" if provider == "gemini" else "test-model")
    assert sum(isinstance(event, Usage) for event in events) == 1
    assert sum(isinstance(event, Finish) for event in events) == 1
    assert fake.count == 1
    CHECKS[provider](fake.last)


def test_extra_fields_are_passed_through(provider, fake):
    extra = {"user": "org-42"} if provider in ("openai", "deepseek") else {"metadata": {"user_id": "org-42"}}
    events, error = run(adapter_for(provider), chat_request(extra=extra))

    assert error is None
    for key, value in extra.items():
        assert fake.last.body[key] == value


@pytest.mark.parametrize(("provider", "native", "reason"), [
    ("openai", "length", "length"),
    ("openai", "content_filter", "content_filter"),
    ("openai", "tool_calls", "tool_calls"),
    ("deepseek", "insufficient_system_resource", "other"),
    ("anthropic", "max_tokens", "length"),
    ("anthropic", "stop_sequence", "stop"),
    ("anthropic", "tool_use", "tool_calls"),
    ("anthropic", "refusal", "content_filter"),
    ("anthropic", "pause_turn", "other"),
    ("gemini", "MAX_TOKENS", "length"),
    ("gemini", "SAFETY", "content_filter"),
    ("gemini", "RECITATION", "content_filter"),
    ("gemini", "PROHIBITED_CONTENT", "content_filter"),
    ("gemini", "OTHER", "other"),
    ("ollama", "length", "length"),
    ("ollama", "load", "other"),
])
def test_finish_reasons_are_normalized(provider, native, reason, fake):
    fake.answer = Answer(pieces=["a", "b"], finish=native)
    events, error = run(adapter_for(provider), chat_request())

    assert error is None
    assert events[-1] == Finish(reason)


def test_bad_key_is_an_auth_error(provider, fake):
    fake.fail_next(AUTH)
    events, error = run(adapter_for(provider), chat_request())

    assert (error.kind, error.status, error.provider) == (ProviderError.AUTH, 401, provider)
    assert not error.retryable
    assert events == []
    assert fake.count == 1


def test_rate_limit_carries_retry_after_and_is_not_retried(provider, fake):
    fake.fail_next(RATE_LIMIT, retry_after=7)
    events, error = run(adapter_for(provider), chat_request())

    assert (error.kind, error.status, error.retry_after, error.provider) == (
        ProviderError.RATE_LIMITED, 429, 7.0, provider)
    assert error.retryable
    assert events == []
    assert fake.count == 1  # the SDKs were told not to retry


def test_server_error_is_unavailable_and_not_retried(provider, fake):
    fake.fail_next(SERVER_ERROR)
    events, error = run(adapter_for(provider), chat_request())

    assert (error.kind, error.status, error.provider) == (ProviderError.UNAVAILABLE, 500, provider)
    assert events == []
    assert fake.count == 1


def test_bad_request(provider, fake):
    fake.fail_next(STATUS, status=400)
    events, error = run(adapter_for(provider), chat_request())

    assert (error.kind, error.status) == (ProviderError.BAD_REQUEST, 400)
    assert not error.retryable


def test_silence_before_the_first_byte_is_a_timeout(provider, fake):
    fake.fail_next(HANG_BEFORE)
    events, error = run(adapter_for(provider), chat_request())

    assert (error.kind, error.provider) == (ProviderError.TIMEOUT, provider)
    assert events == []
    assert fake.count == 1


def test_silence_in_the_middle_of_a_stream_is_a_timeout(provider, fake):
    fake.fail_next(HANG_AFTER_FIRST)
    events, error = run(adapter_for(provider), chat_request())

    assert (error.kind, error.provider) == (ProviderError.TIMEOUT, provider)
    assert texts(events) == ANSWER.pieces[:1]
    assert fake.count == 1


def test_malformed_chunk_is_a_protocol_error(provider, fake):
    fake.fail_next(MALFORMED)
    events, error = run(adapter_for(provider), chat_request())

    assert (error.kind, error.provider) == (ProviderError.PROTOCOL, provider)
    assert texts(events) == ANSWER.pieces[:1]


def test_error_event_in_the_stream_is_unavailable(provider, fake):
    fake.fail_next(STREAM_ERROR)
    events, error = run(adapter_for(provider), chat_request())

    assert (error.kind, error.provider) == (ProviderError.UNAVAILABLE, provider)
    assert texts(events) == ANSWER.pieces[:1]
    assert fake.count == 1


@pytest.mark.parametrize("cut_after", [0, 2])
def test_cut_stream_is_interrupted_after_the_deltas_it_sent(provider, fake, cut_after):
    fake.fail_next(CUT, cut_after=cut_after)
    events, error = run(adapter_for(provider), chat_request())

    assert (error.kind, error.provider) == (ProviderError.INTERRUPTED, provider)
    assert texts(events) == ANSWER.pieces[:cut_after]
    assert not any(isinstance(event, Usage | Finish) for event in events)


def test_connection_refused_is_unavailable(provider, fake, settings):
    with FAKES[provider]() as closed:
        url = closed.url
    settings.LLM_PROVIDERS = {**settings.LLM_PROVIDERS, provider: {"base_url": url, "api_key": "test-key"}}
    events, error = run(adapter_for(provider), chat_request())

    assert (error.kind, error.provider) == (ProviderError.UNAVAILABLE, provider)


def test_abandoned_stream_closes_cleanly(provider, fake):
    async def first_delta_only():
        async with adapter_for(provider) as adapter:
            stream = adapter.stream(chat_request())
            first = await anext(stream)
            await stream.aclose()
            return first

    assert asyncio.run(first_delta_only()) == TextDelta(ANSWER.pieces[0])
    events, error = run(adapter_for(provider), chat_request())
    assert error is None and texts(events) == ANSWER.pieces


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
def test_missing_key_fails_without_a_request(provider, fake, settings):
    settings.LLM_PROVIDERS = {**settings.LLM_PROVIDERS, provider: {"base_url": fake.url, "api_key": ""}}
    events, error = run(adapter_for(provider), chat_request())

    assert error.kind == ProviderError.AUTH
    assert fake.count == 0


@pytest.mark.parametrize("provider", ["openai"])
def test_organization_key_replaces_the_platform_key(provider, fake):
    run(adapter_for("openai", api_key="org-key"), chat_request())

    assert fake.last.headers["authorization"] == "Bearer org-key"


# Provider specifics.

@pytest.mark.parametrize("provider", ["openai"])
def test_openai_exhausted_quota_is_an_auth_error(provider, fake):
    fake.fail_next(STATUS, status=429, body={"error": {
        "message": "You exceeded your current quota.", "type": "insufficient_quota", "param": None,
        "code": "insufficient_quota"}})
    events, error = run(adapter_for(provider), chat_request())

    assert (error.kind, error.status) == (ProviderError.AUTH, 429)


@pytest.mark.parametrize("provider", ["deepseek"])
def test_deepseek_insufficient_balance_is_an_auth_error(provider, fake):
    fake.fail_next(STATUS, status=402, body={"error": {"message": "Insufficient Balance", "type": "unknown_error",
                                                       "param": None, "code": "invalid_request_error"}})
    events, error = run(adapter_for(provider), chat_request())

    assert (error.kind, error.status, error.provider) == (ProviderError.AUTH, 402, "deepseek")


@pytest.mark.parametrize("provider", ["openai"])
def test_openai_retry_after_ms(provider, fake):
    fake.fail_next(STATUS, status=429, headers={"retry-after-ms": "1500"})
    events, error = run(adapter_for(provider), chat_request())

    assert (error.kind, error.retry_after) == (ProviderError.RATE_LIMITED, 1.5)


@pytest.mark.parametrize("provider", ["anthropic"])
def test_anthropic_overloaded_is_unavailable(provider, fake):
    fake.fail_next(STATUS, status=529)
    events, error = run(adapter_for(provider), chat_request())

    assert (error.kind, error.status) == (ProviderError.UNAVAILABLE, 529)


@pytest.mark.parametrize("provider", ["anthropic"])
def test_anthropic_sends_no_system_without_a_system_message(provider, fake):
    run(adapter_for(provider), chat_request(messages=[ChatMessage("user", "Hi")], temperature=None, top_p=None))

    assert "system" not in fake.last.body
    assert "temperature" not in fake.last.body
    assert fake.last.body["messages"] == [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize("provider", ["gemini"])
def test_gemini_invalid_key_answered_with_400_is_an_auth_error(provider, fake):
    fake.fail_next(STATUS, status=400, body={"error": {
        "code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT",
        "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                     "domain": "googleapis.com"}]}})
    events, error = run(adapter_for(provider), chat_request())

    assert (error.kind, error.status) == (ProviderError.AUTH, 400)


@pytest.mark.parametrize("provider", ["gemini"])
def test_gemini_retry_delay_without_header(provider, fake):
    fake.fail_next(STATUS, status=429)  # the body's RetryInfo says 2s
    events, error = run(adapter_for(provider), chat_request())

    assert (error.kind, error.retry_after) == (ProviderError.RATE_LIMITED, 2.0)


@pytest.mark.parametrize("provider", ["ollama"])
def test_ollama_unknown_model(provider, fake):
    fake.fail_next(STATUS, status=404, body={"error": "model 'test-model' not found"})
    events, error = run(adapter_for(provider), chat_request())

    assert (error.kind, error.status) == (ProviderError.BAD_REQUEST, 404)
    assert "not found" in error.message


def test_ollama_without_a_url_is_unavailable(settings):
    settings.LLM_PROVIDERS = {**settings.LLM_PROVIDERS, "ollama": {"base_url": "", "api_key": ""}}
    events, error = run(adapter_for("ollama"), chat_request())

    assert error.kind == ProviderError.UNAVAILABLE


# The demo model.

def demo(question: str, *, max_tokens: int = 1000) -> list:
    adapter = DemoAdapter(api_key="", base_url="", timeouts=Timeouts())
    events, error = run(adapter, ChatRequest(model="demo", messages=[ChatMessage("user", question)],
                                             max_tokens=max_tokens))
    assert error is None
    return events


def test_demo_is_deterministic_markdown_streamed_word_by_word(settings):
    settings.CHAT_DEMO_DELAY = 0
    events = demo("How do I bake bread?")
    answer = "".join(texts(events))

    assert events == demo("How do I bake bread?")
    assert answer != "".join(texts(demo("Something else")))
    assert "demo model" in answer and "not a real AI" in answer
    assert "> How do I bake bread?" in answer
    assert "\n- " in answer and "```" in answer
    assert 60 <= len(texts(events)) <= 120
    assert events[-2:] == [Usage(input_tokens=len("How do I bake bread?") // 4 + 1, output_tokens=len(texts(events))),
                           Finish("stop")]


def test_demo_honours_max_tokens(settings):
    settings.CHAT_DEMO_DELAY = 0
    events = demo("How do I bake bread?", max_tokens=10)

    assert len(texts(events)) == 10
    assert events[-2:] == [Usage(input_tokens=6, output_tokens=10), Finish("length")]
    assert "".join(texts(demo("How do I bake bread?"))).startswith("".join(texts(events)))


def test_demo_waits_between_deltas(settings):
    settings.CHAT_DEMO_DELAY = 0.01
    loop_time = []

    async def timed():
        async for event in DemoAdapter(api_key="", base_url="", timeouts=Timeouts()).stream(
                ChatRequest(model="demo", messages=[ChatMessage("user", "Hi")], max_tokens=6)):
            loop_time.append((asyncio.get_running_loop().time(), event))

    asyncio.run(timed())
    assert loop_time[-1][0] - loop_time[0][0] >= 5 * 0.01 * 0.9


def test_demo_through_the_registry(settings):
    settings.CHAT_DEMO_DELAY = 0
    events, error = run(adapter_for("demo"), ChatRequest(model="demo", messages=[ChatMessage("user", "Hi")],
                                                         max_tokens=5))

    assert error is None
    assert events[-1] == Finish("length")


def test_consecutive_calls_reuse_one_connection(provider, fake):
    """Each answer is read to the end of its body, so the next call reuses the connection (a new
    one costs a TCP, and against real providers a TLS, handshake)."""
    adapter = adapter_for(provider)

    async def three_calls():
        async with adapter:
            for _ in range(3):
                assert [e async for e in adapter.stream(chat_request()) if isinstance(e, Finish)]

    before = fake.connections
    asyncio.run(three_calls())
    assert fake.count == 3 and fake.connections - before == 1
