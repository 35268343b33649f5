"""The Gemini adapter: the official google-genai SDK over HTTP against a loopback Gemini API."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator

import pytest

from portal.crypto import encrypt_secret
from providers.clients import (
    CallSummary,
    ModelCallError,
    ReasoningDelta,
    ReasoningState,
    TextDelta,
    ToolCallRequest,
    TurnEnd,
    Usage,
    stream_turn,
)
from providers.models import LanguageModel
from tests.factories import LanguageModelFactory
from tests.fakes.gemini_server import FAKE_THOUGHT_SIGNATURE, FakeGemini
from tests.providers.conftest import EXECUTE

GEMINI_KEY = "AIzaSyGEMINI-SECRET-KEY-0123456789"
WRONG_KEY = "AIzaSyWRONG-GEMINI-KEY-9876543210"
PROMPT = [{"role": "user", "content": "hello"}]


@pytest.fixture(autouse=True)
def no_retries(settings) -> None:
    """Each error surfaces from the first attempt (retries are the retry layer's business, tested there)."""
    settings.PROVIDER_MAX_RETRIES = 0


@pytest.fixture
def gemini() -> Iterator[FakeGemini]:
    with FakeGemini(api_key=GEMINI_KEY) as server:
        yield server


def gemini_model(org, server: FakeGemini, *, key: str = GEMINI_KEY, **kwargs) -> LanguageModel:
    return LanguageModelFactory(
        provider__organization=org,
        provider__kind="google",
        provider__name="Gemini",
        provider__base_url=server.base_url,
        provider__api_key_encrypted=encrypt_secret(key),
        identifier="gemini-2.5-flash",
        **kwargs,
    )


@pytest.fixture
def model(org, gemini) -> LanguageModel:
    return gemini_model(org, gemini)


@pytest.fixture
def thinking_model(org, gemini) -> LanguageModel:
    return gemini_model(org, gemini, options={"temperature": 0.3, "thinking_budget_tokens": 512}, max_output_tokens=900)


@pytest.fixture
def wrong_key_model(org, gemini) -> LanguageModel:
    return gemini_model(org, gemini, key=WRONG_KEY)


@pytest.fixture
def keyless_model(org, gemini) -> LanguageModel:
    return LanguageModelFactory(
        provider__organization=org,
        provider__kind="google",
        provider__name="Keyless",
        provider__base_url=gemini.base_url,
    )


@pytest.fixture
def refused_model(org) -> tuple[LanguageModel, int]:
    """A model whose server has stopped: nothing listens on its port any more."""
    with FakeGemini() as server:
        model = gemini_model(org, server)
    return model, server.port


async def collect(model: LanguageModel, messages: list[dict] = PROMPT, **kwargs) -> list:
    events = stream_turn(model=model, system="You are terse.", messages=messages, tools=[EXECUTE], **kwargs)
    return [event async for event in events if not isinstance(event, CallSummary)]


async def failure(model: LanguageModel, messages: list[dict] = PROMPT) -> ModelCallError:
    with pytest.raises(ModelCallError) as error:
        await collect(model, messages)
    return error.value


async def test_text_streams_in_several_deltas_then_usage_then_end_turn(model, gemini):
    gemini.enqueue({"text": "Hello, world!", "chunk_chars": 5, "usage": {"input_tokens": 12, "output_tokens": 4}})

    events = await collect(model)

    assert events == [
        TextDelta("Hello"),
        TextDelta(", wor"),
        TextDelta("ld!"),
        Usage(input_tokens=12, output_tokens=4),
        TurnEnd("end_turn"),
    ]


async def test_the_gemini_api_is_used_even_where_the_server_is_set_up_for_vertex(model, gemini, monkeypatch):
    monkeypatch.setenv("GOOGLE_GENAI_USE_VERTEXAI", "true")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "someone-elses-project")
    gemini.enqueue({"text": "Hi."})

    events = await collect(model)

    assert events[0] == TextDelta("Hi.")
    assert gemini.request_log[0]["path"] == "/v1/models/gemini-2.5-flash:streamGenerateContent?alt=sse"


async def test_request_carries_the_key_header_system_prompt_tools_and_correlation(model, gemini):
    gemini.enqueue({"text": "ok"})

    await collect(model, correlation={"session_id": "sess-42", "user_id": "7"})

    [entry] = gemini.request_log
    assert entry["path"] == "/v1/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert entry["headers"]["x-goog-api-key"] == "****" + GEMINI_KEY[-4:]
    assert entry["headers"]["x-airlock-session-id"] == "sess-42"
    assert entry["headers"]["x-airlock-user-id"] == "7"
    body = entry["body"]
    assert body["systemInstruction"]["parts"] == [{"text": "You are terse."}]
    assert body["contents"] == [{"role": "user", "parts": [{"text": "hello"}]}]
    [declaration] = body["tools"][0]["functionDeclarations"]
    assert declaration["name"] == "execute"


async def test_function_call_becomes_a_tool_call_with_its_arguments_and_tool_use(model, gemini):
    gemini.enqueue(
        {"text": "Listing.", "tool_calls": [{"name": "execute", "arguments": {"command": "ls -la", "timeout": 5}}]}
    )

    events = await collect(model)

    [call] = [e for e in events if isinstance(e, ToolCallRequest)]
    assert call.name == "execute"
    assert call.arguments == {"command": "ls -la", "timeout": 5}
    assert call.id
    assert events[-1] == TurnEnd("tool_use")


async def test_tool_result_goes_back_as_a_function_response_named_after_its_call(model, gemini):
    gemini.enqueue({"tool_calls": [{"name": "execute", "arguments": {"command": "pwd"}}]}, {"text": "You are in /."})
    first = await collect(model)
    [call] = [e for e in first if isinstance(e, ToolCallRequest)]
    [state] = [e for e in first if isinstance(e, ReasoningState)]
    history = [
        *PROMPT,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": call.id, "name": call.name, "arguments": call.arguments}],
            "reasoning": state.as_message_field(),  # the signature travels with the message that carries it
        },
        {"role": "tool", "tool_call_id": call.id, "content": "/\n"},
    ]

    second = await collect(model, history)

    assert second[-1] == TurnEnd("end_turn")
    contents = gemini.requests[1]["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    [call_part] = contents[1]["parts"]
    assert call_part["functionCall"]["name"] == "execute"
    assert call_part["functionCall"]["args"] == {"command": "pwd"}
    assert call_part["thoughtSignature"] == FAKE_THOUGHT_SIGNATURE  # Gemini 2.5+ needs its signature back
    [result_part] = contents[2]["parts"]
    assert result_part["functionResponse"] == {"name": "execute", "response": {"output": "/\n"}}


async def test_history_gemini_did_not_produce_gets_the_documented_placeholder_signature(model, gemini):
    gemini.enqueue({"text": "done"})
    history = [
        *PROMPT,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "call_from_openai", "name": "execute", "arguments": {}}],
        },
    ]

    await collect(model, history)

    contents = gemini.requests[0]["contents"]
    assert contents[1]["parts"][0]["thoughtSignature"] == "skip_thought_signature_validator"
    assert contents[1]["parts"][0]["functionCall"]["id"] == "call_from_openai"
    # the call that never got its result is answered with a stand-in, as the API requires
    assert "interrupted" in contents[2]["parts"][0]["functionResponse"]["response"]["output"]


async def test_max_tokens_and_safety_finish_reasons_are_mapped(model, gemini):
    gemini.enqueue({"text": "Long", "finish_reason": "MAX_TOKENS"}, {"text": "", "finish_reason": "SAFETY"})

    assert (await collect(model))[-1] == TurnEnd("max_tokens")
    assert (await collect(model))[-1] == TurnEnd("content_filter")


async def test_cached_prompt_tokens_are_not_counted_twice(model, gemini):
    gemini.enqueue({"text": "hi", "usage": {"input_tokens": 100, "output_tokens": 2, "cache_read_tokens": 900}})

    events = await collect(model)

    [usage] = [e for e in events if isinstance(e, Usage)]
    assert usage.input_tokens == 100 and usage.output_tokens == 2
    assert usage.cache_read_tokens == 900


async def test_thinking_budget_and_temperature_reach_gemini(thinking_model, gemini):
    model = thinking_model
    gemini.enqueue({"reasoning": "Let me think.", "text": "42"})

    events = await collect(model)

    assert [e.text for e in events if isinstance(e, TextDelta)] == ["42"]  # thoughts are never answer text
    assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == "Let me think."
    config = gemini.requests[0]["generationConfig"]
    assert config["temperature"] == 0.3 and config["maxOutputTokens"] == 900
    thinking = config.get("thinkingConfig") or {}
    assert thinking.get("thinkingBudget", thinking.get("thinking_budget")) == 512


async def test_rate_limit_is_retryable_429_with_googles_retry_delay(model, gemini):
    gemini.enqueue({"error": {"status": 429, "message": "Quota exceeded for requests per minute.", "retry_after": 7}})

    error = await failure(model)

    assert error.status == 429 and error.retryable and error.retry_after == 7
    assert "Quota exceeded" in str(error)


async def test_server_error_is_retryable_500(model, gemini):
    gemini.enqueue({"error": {"status": 500}})

    error = await failure(model)

    assert error.status == 500 and error.retryable
    assert f"127.0.0.1:{gemini.port}" in str(error)


async def test_wrong_key_says_the_key_was_rejected_without_showing_it(wrong_key_model, gemini):
    error = await failure(wrong_key_model)

    assert "API key was rejected" in str(error) and "'Gemini'" in str(error)
    assert not error.retryable
    for secret in (WRONG_KEY, GEMINI_KEY, WRONG_KEY[4:], WRONG_KEY[:-4]):
        assert secret not in str(error) and secret not in repr(error.args)


async def test_unknown_model_names_the_identifier(model, gemini):
    gemini.enqueue({"error": {"status": 404, "message": "models/gemini-2.5-flash is not found for API version v1"}})

    error = await failure(model)

    assert error.status == 404 and "'gemini-2.5-flash'" in str(error) and not error.retryable


async def test_connection_refused_is_retryable_and_names_the_host(refused_model):
    model, port = refused_model

    error = await failure(model)

    assert error.retryable and "refused" in str(error) and f"127.0.0.1:{port}" in str(error)


async def test_connection_dropped_mid_stream_is_retryable(model, gemini):
    gemini.enqueue({"text": "Hello there, this will be cut", "chunk_chars": 3, "drop_after_chunks": 2})

    error = await failure(model)

    assert error.retryable and "dropped in the middle of the answer" in str(error)


async def test_missing_key_is_refused_before_any_request(keyless_model, gemini):
    error = await failure(keyless_model)

    assert "no API key" in str(error) and gemini.request_log == []


async def test_slow_stream_leaves_the_event_loop_free(model, gemini):
    gemini.enqueue({"text": "slow answer", "chunk_chars": 2, "chunk_delay": 0.05})
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        await collect(model)
    finally:
        task.cancel()

    assert ticks >= 10


def test_fake_signature_is_base64():
    assert base64.b64decode(FAKE_THOUGHT_SIGNATURE)
