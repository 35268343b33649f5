"""The Bedrock adapter: boto3's converse_stream over HTTP against a loopback Bedrock Runtime (SigV4 checked)."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections.abc import Iterator

import pytest
from botocore.eventstream import EventStreamBuffer

from portal.crypto import encrypt_secret
from providers.clients import (
    CallSummary,
    ModelCallError,
    ReasoningDelta,
    TextDelta,
    ToolCallRequest,
    TurnEnd,
    Usage,
    stream_turn,
)
from providers.models import LanguageModel
from tests.factories import LanguageModelFactory
from tests.fakes.bedrock_server import FakeBedrock, encode_message
from tests.providers.conftest import EXECUTE

KEY_ID = "AKIAAIRLOCKSTORED0001"
SECRET = "storedSECRETaccessKEY/airlock+0123456789"
ENV_KEY_ID = "AKIAAIRLOCKAMBIENT002"
ENV_SECRET = "ambientSECRETaccessKEY/airlock+987654321"
WRONG_SECRET = "wrongSECRETaccessKEY/airlock+5555555555"
MODEL_ID = "anthropic.claude-3-5-sonnet-20241022-v2:0"
PROMPT = [{"role": "user", "content": "hello"}]


@pytest.fixture(autouse=True)
def no_retries(settings) -> None:
    """Each error surfaces from the first attempt (retries are the retry layer's business, tested there)."""
    settings.PROVIDER_MAX_RETRIES = 0


@pytest.fixture
def bedrock() -> Iterator[FakeBedrock]:
    with FakeBedrock(credentials={KEY_ID: SECRET, ENV_KEY_ID: ENV_SECRET}) as server:
        yield server


def bedrock_model(org, server: FakeBedrock, *, secret: str = SECRET, ambient: bool = False, **kwargs) -> LanguageModel:
    return LanguageModelFactory(
        provider__organization=org,
        provider__kind="bedrock",
        provider__name="Bedrock",
        provider__base_url=server.base_url,
        provider__region="us-east-1",
        provider__aws_access_key_id="" if ambient else KEY_ID,
        provider__api_key_encrypted="" if ambient else encrypt_secret(secret),
        provider__use_ambient_credentials=ambient,
        identifier=MODEL_ID,
        **kwargs,
    )


@pytest.fixture
def model(org, bedrock) -> LanguageModel:
    return bedrock_model(org, bedrock)


@pytest.fixture
def thinking_model(org, bedrock) -> LanguageModel:
    return bedrock_model(
        org, bedrock, options={"temperature": 0.5, "thinking_budget_tokens": 2048}, max_output_tokens=4000
    )


@pytest.fixture
def wrong_secret_model(org, bedrock) -> LanguageModel:
    return bedrock_model(org, bedrock, secret=WRONG_SECRET)


@pytest.fixture
def ambient_model(org, bedrock, monkeypatch) -> LanguageModel:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ENV_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ENV_SECRET)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return bedrock_model(org, bedrock, ambient=True)


@pytest.fixture
def refused_model(org) -> tuple[LanguageModel, int]:
    """A model whose server has stopped: nothing listens on its port any more."""
    with FakeBedrock() as server:
        model = bedrock_model(org, server)
    return model, server.port


async def collect(model: LanguageModel, messages: list[dict] = PROMPT, **kwargs) -> list:
    events = stream_turn(model=model, system="You are terse.", messages=messages, tools=[EXECUTE], **kwargs)
    return [event async for event in events if not isinstance(event, CallSummary)]


async def failure(model: LanguageModel) -> ModelCallError:
    with pytest.raises(ModelCallError) as error:
        await collect(model)
    return error.value


def test_eventstream_encoder_is_what_botocore_decodes():
    frame = encode_message({":event-type": "messageStop", ":message-type": "event"}, b'{"stopReason": "end_turn"}')
    buffer = EventStreamBuffer()
    buffer.add_data(frame)

    [message] = list(buffer)

    assert message.headers[":event-type"] == "messageStop"
    assert json.load(io.BytesIO(message.payload)) == {"stopReason": "end_turn"}


async def test_text_streams_in_several_deltas_then_usage_then_end_turn(model, bedrock):
    bedrock.enqueue({"text": "Hello, world!", "chunk_chars": 5, "usage": {"input_tokens": 12, "output_tokens": 4}})

    events = await collect(model)

    assert events == [
        TextDelta("Hello"),
        TextDelta(", wor"),
        TextDelta("ld!"),
        Usage(input_tokens=12, output_tokens=4),
        TurnEnd("end_turn"),
    ]


async def test_stored_access_key_signs_the_request_and_headers_carry_correlation(model, bedrock):
    bedrock.enqueue({"text": "ok"})

    await collect(model, correlation={"session_id": "sess-9", "user_id": "3"})

    [entry] = bedrock.request_log
    assert entry["path"] == "/model/anthropic.claude-3-5-sonnet-20241022-v2%3A0/converse-stream"
    assert f"Credential={KEY_ID}/" in entry["headers"]["authorization"]
    assert entry["headers"]["x-airlock-session-id"] == "sess-9"
    assert entry["headers"]["x-airlock-user-id"] == "3"
    body = entry["body"]
    assert body["system"] == [{"text": "You are terse."}]
    assert body["messages"] == [{"role": "user", "content": [{"text": "hello"}]}]
    assert body["toolConfig"]["tools"][0]["toolSpec"]["name"] == "execute"


async def test_tool_call_is_assembled_from_partial_json(model, bedrock):
    arguments = {"command": "grep -rn 'TODO' src/ | head -50", "timeout": 30}
    bedrock.enqueue(
        {"text": "Searching.", "tool_calls": [{"id": "tooluse_abc", "name": "execute", "arguments": arguments}]}
    )

    events = await collect(model)

    [call] = [e for e in events if isinstance(e, ToolCallRequest)]
    assert (call.id, call.name, call.arguments) == ("tooluse_abc", "execute", arguments)
    assert events[-1] == TurnEnd("tool_use")


async def test_tool_result_goes_back_as_tool_use_and_tool_result_blocks(model, bedrock):
    bedrock.enqueue({"text": "It is /."})
    history = [
        *PROMPT,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "tooluse_1", "name": "execute", "arguments": {"command": "pwd"}}],
        },
        {"role": "tool", "tool_call_id": "tooluse_1", "content": "/\n"},
        {"role": "user", "content": "and then?"},
    ]

    await collect(model, history)

    messages = bedrock.requests[0]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]  # tool result and next prompt merged
    assert messages[1]["content"] == [
        {"toolUse": {"toolUseId": "tooluse_1", "name": "execute", "input": {"command": "pwd"}}}
    ]
    assert messages[2]["content"] == [
        {"toolResult": {"toolUseId": "tooluse_1", "content": [{"text": "/\n"}]}},
        {"text": "and then?"},
    ]


async def test_reasoning_usage_with_cache_and_options_reach_the_caller(thinking_model, bedrock):
    bedrock.enqueue(
        {
            "reasoning": "Thinking hard.",
            "text": "42",
            "usage": {"input_tokens": 20, "output_tokens": 9, "cache_read_tokens": 300, "cache_write_tokens": 50},
        }
    )

    events = await collect(thinking_model)

    assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == "Thinking hard."
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["42"]
    assert Usage(input_tokens=20, output_tokens=9, cache_read_tokens=300, cache_write_tokens=50) in events
    body = bedrock.requests[0]
    assert body["inferenceConfig"] == {"maxTokens": 4000, "temperature": 0.5}
    assert body["additionalModelRequestFields"] == {"thinking": {"type": "enabled", "budget_tokens": 2048}}


async def test_max_tokens_and_guardrail_stop_reasons_are_mapped(model, bedrock):
    bedrock.enqueue(
        {"text": "Long", "finish_reason": "max_tokens"}, {"text": "No.", "finish_reason": "guardrail_intervened"}
    )

    assert (await collect(model))[-1] == TurnEnd("max_tokens")
    assert (await collect(model))[-1] == TurnEnd("content_filter")


async def test_throttling_is_retryable_429(model, bedrock):
    bedrock.enqueue({"error": {"status": 429, "retry_after": 3}})

    error = await failure(model)

    assert error.status == 429 and error.retryable and error.retry_after == 3
    assert "throttled" in str(error)


async def test_internal_error_is_retryable_500(model, bedrock):
    bedrock.enqueue({"error": {"status": 500}})

    error = await failure(model)

    assert error.status == 500 and error.retryable and f"127.0.0.1:{bedrock.port}" in str(error)


async def test_validation_error_is_a_400_with_bedrocks_message(model, bedrock):
    bedrock.enqueue(
        {"error": {"status": 400, "message": "The model returned the following errors: max_tokens too big"}}
    )

    error = await failure(model)

    assert error.status == 400 and not error.retryable and "max_tokens too big" in str(error)


async def test_model_stream_error_mid_answer_is_retryable(model, bedrock):
    bedrock.enqueue(
        {"text": "Partial", "stream_error": {"code": "modelStreamErrorException", "message": "Model crashed."}}
    )

    with pytest.raises(ModelCallError) as error:
        await collect(model)

    assert error.value.retryable and "Model crashed." in str(error.value)


async def test_wrong_secret_says_the_credentials_were_rejected_without_showing_them(wrong_secret_model, bedrock):
    error = await failure(wrong_secret_model)

    assert "the AWS credentials were rejected" in str(error) and "'Bedrock'" in str(error)
    assert error.status == 403 and not error.retryable
    for secret in (WRONG_SECRET, SECRET, WRONG_SECRET[:12], WRONG_SECRET[-12:]):
        assert secret not in str(error) and secret not in repr(error.args)


async def test_ambient_credentials_come_from_the_environment_not_the_provider(ambient_model, bedrock):
    bedrock.enqueue({"text": "ambient ok"})

    events = await collect(ambient_model)

    assert events[-1] == TurnEnd("end_turn")
    assert bedrock.key_ids_seen == [ENV_KEY_ID]


async def test_connection_refused_is_retryable_and_names_the_host(refused_model):
    model, port = refused_model

    error = await failure(model)

    assert error.retryable and f"127.0.0.1:{port}" in str(error)


async def test_connection_dropped_mid_stream_is_retryable(model, bedrock):
    bedrock.enqueue({"text": "Hello there, this will be cut", "chunk_chars": 3, "drop_after_chunks": 3})

    error = await failure(model)

    assert error.retryable and "dropped in the middle of the answer" in str(error)


async def test_slow_stream_does_not_block_the_event_loop(model, bedrock):
    bedrock.enqueue({"text": "slow answer here", "chunk_chars": 2, "chunk_delay": 0.05, "delay": 0.2})
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        events = await collect(model)
    finally:
        task.cancel()

    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "slow answer here"
    assert ticks >= 30  # about 0.6 s of streaming: a blocked loop would not have ticked at all


async def test_stopping_early_ends_the_worker_thread(model, bedrock):
    bedrock.enqueue({"text": "x" * 400, "chunk_chars": 1, "chunk_delay": 0.01})
    events = stream_turn(model=model, system="", messages=PROMPT, tools=[])

    first = await events.__anext__()
    await events.aclose()

    assert isinstance(first, TextDelta)
    for _ in range(100):
        if not any(t.name.startswith("bedrock-stream") and t.is_alive() for t in threading.enumerate()):
            break
        await asyncio.sleep(0.02)
    assert not any(t.name.startswith("bedrock-stream") and t.is_alive() for t in threading.enumerate())
