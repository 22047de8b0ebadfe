"""Tool calls (function calling) through each provider adapter, against a local fake of its API.

OpenAI's shape goes in (`tools`, `tool_choice`, assistant turns with `tool_calls`, `tool` turns)
and comes out (`ToolCallDelta` fragments, `Finish("tool_calls")`), whatever the provider speaks
on the wire. No database: adapters are built by the registry from settings pointed at the fakes.
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import pytest

from chat.catalog.models import Model
from chat.catalog.selectors import ModelOption
from chat.providers import (
    ChatMessage,
    ChatRequest,
    Finish,
    ProviderError,
    StreamError,
    Timeouts,
    ToolCall,
    ToolCallDelta,
    Usage,
    adapter_for,
    tool_calls_assemble,
)
from chat.providers.demo import DemoAdapter
from chat.redis import async_client_close
from chat.routing import Served, route_stream
from core.redis_clients import redis_client

from .fake_llm import CUT, FAKES, Answer, FakeProvider, FakeToolCall
from .test_chat_providers import run, texts

PROVIDERS = ["openai", "deepseek", "anthropic", "gemini", "ollama"]
# Providers that name calls themselves; Gemini and Ollama send none, so the adapter makes one.
NAMING_PROVIDERS = frozenset({"openai", "deepseek", "anthropic"})
ANSWER = Answer(pieces=["It is", " sunny."], input_tokens=40, output_tokens=6)

PARAMETERS = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": ["string", "null"], "enum": ["c", "f"]},
        "options": {"type": "object", "properties": {"days": {"type": "integer", "enum": [1, 3, 7]}},
                    "additionalProperties": False},
    },
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city.",
                                            "parameters": PARAMETERS}}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
TOOLS = [WEATHER, CLOCK]


def deltas(events: list) -> list[ToolCallDelta]:
    return [event for event in events if isinstance(event, ToolCallDelta)]


def tool_request(messages: list[ChatMessage] | None = None, **extra) -> ChatRequest:
    messages = messages or [ChatMessage("system", "Use the tools."), ChatMessage("user", "Weather in Lisboa?")]
    return ChatRequest(model="test-model", messages=messages, max_tokens=64, extra={"tools": TOOLS, **extra})


@pytest.fixture(params=PROVIDERS)
def provider(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def servers():
    """One running fake per protocol for the whole module."""
    running: dict[str, FakeProvider] = {}
    yield running
    for server in running.values():
        server.stop()


def fake_pointed(provider: str, settings, servers: dict[str, FakeProvider]) -> FakeProvider:
    """The provider's fake, reset, with the registry's settings pointed at it."""
    fake_class = FAKES[provider]
    server = servers.get(fake_class.name) or servers.setdefault(fake_class.name, fake_class().start())
    server.reset()
    server.answer = ANSWER
    key = "" if provider == "ollama" else "test-key"
    settings.LLM_PROVIDERS = {**settings.LLM_PROVIDERS, provider: {"base_url": server.url, "api_key": key}}
    settings.LLM_READ_TIMEOUT = 2.0
    settings.LLM_CONNECT_TIMEOUT = 1.0
    return server


@pytest.fixture
def fake(provider, settings, servers) -> FakeProvider:
    return fake_pointed(provider, settings, servers)


# A tool call in the answer.

def test_a_tool_call_streams_as_fragments_that_reassemble(provider, fake):
    call = fake.tool_call_next("get_weather", {"city": "Lisboa", "unit": "c"})
    events, error = run(adapter_for(provider), tool_request())

    assert error is None
    assert texts(events) == []
    (assembled,) = tool_calls_assemble(events)
    assert assembled.name == "get_weather"
    assert json.loads(assembled.arguments) == {"city": "Lisboa", "unit": "c"}
    if provider in NAMING_PROVIDERS:
        assert assembled.id == call.id
    else:
        assert assembled.id.startswith("call_") and len(assembled.id) > 10
    fragments = deltas(events)
    assert (fragments[0].index, fragments[0].id, fragments[0].name) == (0, assembled.id, "get_weather")
    assert all((f.index, f.id, f.name) == (0, None, None) for f in fragments[1:])
    # OpenAI and Anthropic stream the arguments in pieces; Gemini and Ollama send a call whole.
    assert len(fragments) > 2 if provider in NAMING_PROVIDERS else len(fragments) == 1
    assert events[-2:] == [Usage(input_tokens=40, output_tokens=6), Finish("tool_calls")]


def test_the_scripted_tool_call_is_one_answer_only(provider, fake):
    fake.tool_call_next("get_weather", {"city": "Lisboa"})
    run(adapter_for(provider), tool_request())
    events, error = run(adapter_for(provider), tool_request())

    assert error is None
    assert texts(events) == ANSWER.pieces
    assert deltas(events) == []
    assert events[-1] == Finish("stop")


def test_text_then_two_calls(provider, fake):
    weather, clock = FakeToolCall("get_weather", {"city": "Porto"}), FakeToolCall("get_time", {})
    fake.answer_next(Answer(pieces=["Let me", " check."], input_tokens=12, output_tokens=30, finish="tool_calls",
                            tool_calls=[weather, clock]))
    events, error = run(adapter_for(provider), tool_request())

    assert error is None
    assert texts(events) == ["Let me", " check."]
    calls = tool_calls_assemble(events)
    assert [(call.name, json.loads(call.arguments)) for call in calls] == [
        ("get_weather", {"city": "Porto"}), ("get_time", {})]
    if provider in NAMING_PROVIDERS:
        assert [call.id for call in calls] == [weather.id, clock.id]
    assert len({call.id for call in calls}) == 2
    # Indexes count calls, not Anthropic's content blocks (its text block is block 0).
    assert sorted({delta.index for delta in deltas(events)}) == [0, 1]
    assert events[-2:] == [Usage(input_tokens=12, output_tokens=30), Finish("tool_calls")]


# The follow-up turn: the assistant's calls and their results, in each provider's shape.

HISTORY = [
    ChatMessage("system", "Use the tools."),
    ChatMessage("user", "Weather in Lisboa and Porto?"),
    ChatMessage("assistant", "Let me check.", tool_calls=(
        ToolCall("call_1", "get_weather", '{"city": "Lisboa"}'),
        ToolCall("call_2", "get_weather", '{"city": "Porto"}'),
    )),
    ChatMessage("tool", '{"temp": 21}', tool_call_id="call_1"),
    ChatMessage("tool", "sunny", tool_call_id="call_2"),
    ChatMessage("user", "And tomorrow?"),
]


def check_openai(body: dict) -> None:
    assert body["tools"] == TOOLS
    assert body["messages"][2:] == [
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Lisboa"}'}},
            {"id": "call_2", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Porto"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
        {"role": "tool", "tool_call_id": "call_2", "content": "sunny"},
        {"role": "user", "content": "And tomorrow?"},
    ]


def check_anthropic(body: dict) -> None:
    assert body["tools"] == [
        {"name": "get_weather", "description": "Current weather in a city.", "input_schema": PARAMETERS},
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in body
    assert body["system"] == "Use the tools."
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Lisboa and Porto?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Lisboa"}},
            {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Porto"}},
        ]},
        {"role": "user", "content": [  # both results in one user turn
            {"type": "tool_result", "tool_use_id": "call_1", "content": '{"temp": 21}'},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "sunny"},
        ]},
        {"role": "user", "content": "And tomorrow?"},
    ]


def check_gemini(body: dict) -> None:
    # The schema loses what Gemini refuses ($schema, additionalProperties, at any depth); a function
    # without arguments has no `parameters`.
    assert body["tools"] == [{"functionDeclarations": [
        {"name": "get_weather", "description": "Current weather in a city.", "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "nullable": True, "enum": ["c", "f"]},
                # Gemini's enum values are strings.
                "options": {"type": "object", "properties": {"days": {"type": "integer", "enum": ["1", "3", "7"]}}},
            },
            "required": ["city"],
        }},
        {"name": "get_time"},
    ]}]
    assert "toolConfig" not in body
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Weather in Lisboa and Porto?"}]},
        {"role": "model", "parts": [
            {"text": "Let me check."},
            {"functionCall": {"name": "get_weather", "args": {"city": "Lisboa"}}},
            {"functionCall": {"name": "get_weather", "args": {"city": "Porto"}}},
        ]},
        {"role": "user", "parts": [  # both results in one user turn, named by the calls they answer
            {"functionResponse": {"name": "get_weather", "response": {"content": {"temp": 21}}}},
            {"functionResponse": {"name": "get_weather", "response": {"content": "sunny"}}},
        ]},
        {"role": "user", "parts": [{"text": "And tomorrow?"}]},
    ]


def check_ollama(body: dict) -> None:
    assert body["tools"] == TOOLS
    assert body["messages"][2:] == [
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Lisboa"}}},
            {"function": {"name": "get_weather", "arguments": {"city": "Porto"}}},
        ]},
        {"role": "tool", "content": '{"temp": 21}', "tool_name": "get_weather"},
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        {"role": "user", "content": "And tomorrow?"},
    ]


CHECKS = {"openai": check_openai, "deepseek": check_openai, "anthropic": check_anthropic, "gemini": check_gemini,
          "ollama": check_ollama}


def test_follow_up_with_calls_and_results_in_the_providers_shape(provider, fake):
    events, error = run(adapter_for(provider), tool_request(HISTORY))

    assert error is None
    assert texts(events) == ANSWER.pieces
    assert fake.count == 1
    CHECKS[provider](fake.last.body)


@pytest.mark.parametrize("provider", ["anthropic", "gemini", "ollama"])
def test_call_arguments_that_are_not_an_object_are_refused_before_sending(provider, fake):
    history = [ChatMessage("user", "Hi"),
               ChatMessage("assistant", "", tool_calls=(ToolCall("call_1", "get_weather", "Lisboa"),)),
               ChatMessage("tool", "sunny", tool_call_id="call_1")]
    events, error = run(adapter_for(provider), tool_request(history))

    assert (error.kind, error.provider) == (ProviderError.BAD_REQUEST, provider)
    assert "call_1" in error.message
    assert fake.count == 0


@pytest.mark.parametrize("provider", ["anthropic", "gemini", "ollama"])
def test_a_call_without_arguments_is_an_empty_object(provider, fake):
    history = [ChatMessage("user", "Time?"),
               ChatMessage("assistant", "", tool_calls=(ToolCall("call_9", "get_time", ""),)),
               ChatMessage("tool", "12:00", tool_call_id="call_9")]
    events, error = run(adapter_for(provider), tool_request(history))

    assert error is None
    body = fake.last.body
    sent = {"anthropic": lambda: body["messages"][1]["content"][0]["input"],
            "gemini": lambda: body["contents"][1]["parts"][0]["functionCall"]["args"],
            "ollama": lambda: body["messages"][1]["tool_calls"][0]["function"]["arguments"]}[provider]()
    assert sent == {}


@pytest.mark.parametrize("provider", ["gemini"])
def test_gemini_refuses_a_result_for_an_unknown_call(provider, fake):
    history = [ChatMessage("user", "Hi"), ChatMessage("tool", "sunny", tool_call_id="call_x")]
    events, error = run(adapter_for(provider), tool_request(history))

    assert error.kind == ProviderError.BAD_REQUEST
    assert fake.count == 0


# tool_choice.

FORCE_WEATHER = {"type": "function", "function": {"name": "get_weather"}}


@pytest.mark.parametrize(("provider", "choice", "expected"), [
    ("openai", "required", {"tools": TOOLS, "tool_choice": "required"}),
    ("openai", FORCE_WEATHER, {"tools": TOOLS, "tool_choice": FORCE_WEATHER}),
    ("deepseek", "none", {"tools": TOOLS, "tool_choice": "none"}),
    ("anthropic", "auto", {"tool_choice": {"type": "auto"}}),
    ("anthropic", "required", {"tool_choice": {"type": "any"}}),
    ("anthropic", FORCE_WEATHER, {"tool_choice": {"type": "tool", "name": "get_weather"}}),
    ("anthropic", "none", {"tools": None, "tool_choice": None}),
    ("gemini", "auto", {"toolConfig": {"functionCallingConfig": {"mode": "AUTO"}}}),
    ("gemini", "required", {"toolConfig": {"functionCallingConfig": {"mode": "ANY"}}}),
    ("gemini", "none", {"toolConfig": {"functionCallingConfig": {"mode": "NONE"}}}),
    ("gemini", FORCE_WEATHER, {"toolConfig": {"functionCallingConfig": {
        "mode": "ANY", "allowedFunctionNames": ["get_weather"]}}}),
    ("ollama", "auto", {"tools": TOOLS, "tool_choice": None}),
    ("ollama", "none", {"tools": None, "tool_choice": None}),
])
def test_tool_choice_is_translated(provider, choice, expected, fake):
    events, error = run(adapter_for(provider), tool_request(tool_choice=choice))

    assert error is None
    body = fake.last.body
    for name, value in expected.items():
        assert body.get(name) == value, name
    if provider in ("anthropic", "gemini") and choice != "none":
        assert len(body["tools"]) >= 1


@pytest.mark.parametrize("provider", ["anthropic"])
def test_anthropic_none_keeps_the_tools_a_history_with_calls_needs(provider, fake):
    events, error = run(adapter_for(provider), tool_request(HISTORY, tool_choice="none"))

    assert error is None
    assert len(fake.last.body["tools"]) == 2
    assert fake.last.body["tool_choice"] == {"type": "none"}


@pytest.mark.parametrize("provider", ["anthropic"])
def test_anthropic_parallel_tool_calls_false(provider, fake):
    run(adapter_for(provider), tool_request(tool_choice="required", parallel_tool_calls=False))

    assert fake.last.body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert "parallel_tool_calls" not in fake.last.body


# The other OpenAI fields that come with tools.

JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "weather", "strict": True, "schema": {
    "type": "object", "properties": {"temp": {"type": "number"}}, "required": ["temp"],
    "additionalProperties": False}}}


@pytest.mark.parametrize("provider", ["anthropic"])
def test_anthropic_drops_what_it_does_not_know_and_maps_user(provider, fake):
    events, error = run(adapter_for(provider), tool_request(response_format=JSON_SCHEMA, seed=7, user="org-42"))

    assert error is None
    body = fake.last.body
    assert not {"response_format", "seed", "user"} & body.keys()
    assert body["metadata"] == {"user_id": "org-42"}


@pytest.mark.parametrize("provider", ["gemini"])
def test_gemini_response_format(provider, fake):
    run(adapter_for(provider), tool_request(response_format=JSON_SCHEMA, seed=7, user="org-42"))
    config = fake.last.body["generationConfig"]

    assert config["responseMimeType"] == "application/json"
    assert config["responseSchema"] == {"type": "object", "properties": {"temp": {"type": "number"}},
                                        "required": ["temp"]}
    assert config["seed"] == 7
    assert not {"response_format", "seed", "user"} & fake.last.body.keys()

    run(adapter_for(provider), tool_request(response_format={"type": "json_object"}))
    assert fake.last.body["generationConfig"]["responseMimeType"] == "application/json"
    assert "responseSchema" not in fake.last.body["generationConfig"]

    referencing = {"type": "json_schema", "json_schema": {"name": "tree", "schema": {
        "$defs": {"node": {"type": "object"}}, "type": "object", "properties": {"root": {"$ref": "#/$defs/node"}}}}}
    run(adapter_for(provider), tool_request(response_format=referencing))
    assert fake.last.body["generationConfig"]["responseMimeType"] == "application/json"
    assert "responseSchema" not in fake.last.body["generationConfig"]


@pytest.mark.parametrize("provider", ["ollama"])
def test_ollama_response_format_and_options(provider, fake):
    run(adapter_for(provider), tool_request(response_format=JSON_SCHEMA, seed=7))

    assert fake.last.body["format"] == JSON_SCHEMA["json_schema"]["schema"]
    assert fake.last.body["options"]["seed"] == 7
    assert "response_format" not in fake.last.body


def test_demo_ignores_tools(settings):
    settings.CHAT_DEMO_DELAY = 0
    adapter = DemoAdapter(api_key="", base_url="", timeouts=Timeouts())
    events, error = run(adapter, ChatRequest(model="demo", messages=HISTORY, max_tokens=1000,
                                             extra={"tools": TOOLS, "tool_choice": "required"}))

    assert error is None
    assert deltas(events) == []
    assert "> And tomorrow?" in "".join(texts(events))
    assert events[-1] == Finish("stop")


# Through the router: a tool call is an answer like text is.

def option(provider: str) -> ModelOption:
    model = Model(id=f"{provider}/test-model", provider=provider, provider_model="test-model",
                  display_name=provider, context_window=100_000, max_output_tokens=1000, tools=True)
    return ModelOption(model, Decimal("1"), Decimal("1"))


def route(candidates: list[ModelOption], request: ChatRequest) -> list:
    async def consume():
        try:
            return [event async for event in route_stream(candidates, request, own_keys={})]
        finally:
            await async_client_close()

    return asyncio.run(consume())


@pytest.fixture
def routed(settings, servers):
    """The OpenAI fake, first choice, and the Gemini fake, its fallback; closed circuit breakers."""
    breakers = [f"chat:breaker:{provider}:{state}" for provider in ("openai", "gemini")
                for state in ("failures", "open")]
    redis_client().delete(*breakers)
    yield fake_pointed("openai", settings, servers), fake_pointed("gemini", settings, servers)
    redis_client().delete(*breakers)


def test_the_router_passes_tool_calls_through(routed):
    primary, fallback = routed
    call = primary.tool_call_next("get_weather", {"city": "Lisboa"})
    events = route([option("openai"), option("gemini")], tool_request())

    assert isinstance(events[0], Served) and events[0].option.id == "openai/test-model"
    assert tool_calls_assemble(events) == (ToolCall(call.id, "get_weather", '{"city": "Lisboa"}'),)
    assert events[-1] == Finish("tool_calls")
    assert fallback.count == 0


def test_a_tool_call_cut_short_is_not_finished_by_a_fallback(routed):
    primary, fallback = routed
    primary.tool_call_next("get_weather", {"city": "Lisboa"})
    primary.fail_next(CUT, cut_after=1)  # the call's first fragment (its name), then the connection closes
    events = route([option("openai"), option("gemini")], tool_request())

    assert [event.name for event in events if isinstance(event, ToolCallDelta)] == ["get_weather"]
    assert isinstance(events[-1], StreamError) and events[-1].error.kind == ProviderError.INTERRUPTED
    assert fallback.count == 0
