"""Streams of unusual or broken shape: the adapters read the wire's JSON and answer each oddity clearly."""

from __future__ import annotations

import json

import pytest

from providers.clients import CallSummary, ModelCallError, ReasoningDelta, TextDelta, TurnEnd, Usage, stream_turn
from providers.models import LanguageModel
from tests.factories import LanguageModelFactory
from tests.fakes import RawStreamServer

PROMPT = [{"role": "user", "content": "hello"}]


def sse(data: object, event: str | None = None) -> str:
    """One server-sent event frame carrying JSON (or a string verbatim)."""
    payload = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\n" if event else "") + f"data: {payload}\n\n"


def chat_chunk(delta: dict | None = None, finish_reason: str | None = None, **extra: object) -> dict:
    """A Chat Completions stream chunk with one choice."""
    choice = {"index": 0, "delta": delta or {}, "finish_reason": finish_reason}
    return {"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [choice], **extra}


async def collect(model: LanguageModel) -> list:
    """The events of one turn, without the CallSummary."""
    return [
        event
        async for event in stream_turn(model=model, system="", messages=PROMPT, tools=[])
        if not isinstance(event, CallSummary)
    ]


@pytest.fixture
def raw_server():
    with RawStreamServer() as server:
        yield server


@pytest.fixture
def chat_model(org, raw_server) -> LanguageModel:
    return LanguageModelFactory(provider__organization=org, provider__base_url=f"{raw_server.base_url}/v1")


@pytest.fixture
def claude(org, raw_server) -> LanguageModel:
    return LanguageModelFactory(
        provider__organization=org, provider__kind="anthropic", provider__base_url=raw_server.base_url
    )


async def test_reasoning_content_beside_a_null_content_becomes_reasoning_then_text(chat_model, raw_server):
    raw_server.enqueue(
        {
            "frames": [
                sse(chat_chunk({"role": "assistant", "content": None, "reasoning_content": "Think first."})),
                sse(chat_chunk({"reasoning": " Then more."})),
                sse(chat_chunk({"content": "Answer."})),
                sse(chat_chunk({}, "stop")),
                sse({"id": "c1", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}}),
                "data: [DONE]\n\n",
            ]
        }
    )
    events = await collect(chat_model)
    assert [e.text for e in events if isinstance(e, ReasoningDelta)] == ["Think first.", " Then more."]
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Answer."]
    assert Usage(input_tokens=9, output_tokens=4) in events
    assert events[-1] == TurnEnd(stop_reason="end_turn")


async def test_nonsense_token_counts_count_as_zero_instead_of_failing_the_turn(chat_model, raw_server):
    usage = {"prompt_tokens": "many", "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 1e400}}
    raw_server.enqueue({"frames": [sse(chat_chunk({"content": "Hi"}, "stop")), sse({"choices": [], "usage": usage})]})
    events = await collect(chat_model)
    assert Usage(input_tokens=0, output_tokens=3) in events


@pytest.mark.parametrize(
    "frame",
    [
        sse({"id": "c1", "choices": "not a list"}),
        sse([1, 2, 3]),
        sse({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [7]}}]}),
        sse("<html>not json</html>"),
        sse(chat_chunk({"content": ["a", "b"]})),
    ],
    ids=["choices-not-a-list", "json-array", "tool-call-not-an-object", "not-json", "content-not-text"],
)
async def test_a_chunk_of_the_wrong_shape_fails_the_turn_with_a_clear_message(chat_model, raw_server, frame):
    raw_server.enqueue({"frames": [sse(chat_chunk({"content": "Hi"})), frame]})
    with pytest.raises(ModelCallError) as error:
        await collect(chat_model)
    assert "is not a Chat Completions stream" in str(error.value) and "base URL" in str(error.value)


async def test_an_error_event_mid_stream_is_reported_with_the_servers_message(chat_model, raw_server):
    raw_server.enqueue({"frames": [sse(chat_chunk({"content": "Hi"})), sse({"error": {"message": "GPU worker lost"}})]})
    with pytest.raises(ModelCallError) as error:
        await collect(chat_model)
    assert "GPU worker lost" in str(error.value)


@pytest.mark.parametrize(
    "frame",
    [
        sse(
            {"type": "content_block_delta", "delta": {"type": "thinking_delta", "thinking": "x"}}, "content_block_delta"
        ),
        sse({"type": "content_block_start", "index": 0, "content_block": "text"}, "content_block_start"),
        sse(["message_start"], "message_start"),
        sse(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": 5}},
            "content_block_delta",
        ),
        sse(
            {
                "type": "content_block_start",
                "index": "1",
                "content_block": {"type": "tool_use", "id": "t", "name": "x"},
            },
            "content_block_start",
        ),
        sse(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": 1}},
            "content_block_start",
        ),
        sse(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": ["a"]}},
            "content_block_delta",
        ),
    ],
    ids=[
        "delta-without-index",
        "block-not-an-object",
        "json-array",
        "partial-json-not-text",
        "index-not-an-integer",
        "thinking-not-text",
        "text-not-text",
    ],
)
async def test_an_anthropic_event_of_the_wrong_shape_fails_the_turn_with_a_clear_message(claude, raw_server, frame):
    start = {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "x"}}
    stop = sse({"type": "message_stop"}, "message_stop")
    raw_server.enqueue({"frames": [sse(start, "content_block_start"), frame, stop]})
    with pytest.raises(ModelCallError) as error:
        await collect(claude)
    assert "is not a Messages API stream" in str(error.value)


async def test_an_anthropic_stream_with_extra_fields_and_pings_still_streams(claude, raw_server):
    message = {"id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "m", "usage": {}}
    message["usage"] = {"input_tokens": 12, "output_tokens": 1, "future_field": {"x": 1}}
    raw_server.enqueue(
        {
            "frames": [
                sse({"type": "message_start", "message": message}, "message_start"),
                sse({"type": "ping"}, "ping"),
                sse(
                    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                    "content_block_start",
                ),
                sse(
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": "Hello"},
                        "new_field": True,
                    },
                    "content_block_delta",
                ),
                sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
                sse(
                    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}},
                    "message_delta",
                ),
                sse({"type": "message_stop"}, "message_stop"),
            ]
        }
    )
    events = await collect(claude)
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hello"]
    assert Usage(input_tokens=12, output_tokens=2) in events
    assert events[-1] == TurnEnd(stop_reason="end_turn")
