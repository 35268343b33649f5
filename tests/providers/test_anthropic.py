"""The Anthropic adapter: the official SDK over loopback HTTP to the simulator's Messages API."""

from __future__ import annotations

import anthropic
import pytest

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
from tests.providers.conftest import EXECUTE, SECRET_KEY

PROMPT = [{"role": "user", "content": "hello"}]


async def collect(model: LanguageModel, messages: list[dict] = PROMPT, **kwargs) -> list:
    """The events of one turn, without the CallSummary."""
    return [
        event
        async for event in stream_turn(model=model, system="Be brief.", messages=messages, tools=[EXECUTE], **kwargs)
        if not isinstance(event, CallSummary)
    ]


def text_of(events: list) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


@pytest.fixture
def claude(org, keyed_simulator) -> LanguageModel:
    """An Anthropic provider holding the right key, pointed at the simulator's root."""
    return LanguageModelFactory(
        provider__organization=org,
        provider__name="Claude",
        provider__kind="anthropic",
        provider__base_url=keyed_simulator.root_url,
        provider__api_key_encrypted=encrypt_secret(SECRET_KEY),
        identifier="claude-sim",
    )


async def test_text_streams_as_deltas_with_usage_including_cache_tokens(claude, keyed_simulator):
    keyed_simulator.enqueue(
        {
            "text": "Hello from Claude.",
            "chunk_chars": 6,
            "usage": {"prompt_tokens": 40, "completion_tokens": 5, "cache_read_tokens": 300, "cache_write_tokens": 20},
        }
    )

    events = await collect(claude)

    assert events == [
        TextDelta("Hello "),
        TextDelta("from C"),
        TextDelta("laude."),
        Usage(input_tokens=40, output_tokens=5, cache_read_tokens=300, cache_write_tokens=20),
        TurnEnd("end_turn"),
    ]
    [logged] = keyed_simulator.request_log
    assert logged["path"] == "/v1/messages"
    assert logged["body"]["model"] == "claude-sim" and logged["body"]["stream"] is True
    assert logged["body"]["system"] == "Be brief." and logged["body"]["max_tokens"] == 4096
    assert logged["body"]["tools"][0] == {
        "name": "execute",
        "description": EXECUTE.description,
        "input_schema": EXECUTE.parameters,
    }
    assert "anthropic-version" in logged["headers"] and SECRET_KEY not in str(logged)


async def test_tool_input_split_over_several_json_deltas_is_reassembled(claude, keyed_simulator):
    keyed_simulator.enqueue(
        {
            "text": "Let me check.",
            "tool_calls": [
                {"id": "toolu_1", "name": "execute", "arguments": {"command": "ls -la /srv && cat README.md"}},
                {"id": "toolu_2", "name": "execute", "arguments": {"command": "pwd"}},
            ],
        }
    )

    events = await collect(claude)

    calls = [e for e in events if isinstance(e, ToolCallRequest)]
    assert [(c.id, c.name, c.arguments) for c in calls] == [
        ("toolu_1", "execute", {"command": "ls -la /srv && cat README.md"}),
        ("toolu_2", "execute", {"command": "pwd"}),
    ]
    assert text_of(events) == "Let me check." and events[-1] == TurnEnd("tool_use")


async def test_extended_thinking_arrives_as_reasoning_before_the_answer(claude, keyed_simulator):
    claude.options = {"thinking_budget_tokens": 2048, "temperature": 0.2}
    claude.max_output_tokens = 1000
    keyed_simulator.enqueue({"thinking": "The user greets me; greet back.", "text": "Hi!", "chunk_chars": 8})

    events = await collect(claude)

    reasoning = [e.text for e in events if isinstance(e, ReasoningDelta)]
    assert "".join(reasoning) == "The user greets me; greet back." and len(reasoning) > 1
    assert events.index(next(e for e in events if isinstance(e, TextDelta))) > len(reasoning) - 1
    assert text_of(events) == "Hi!"
    body = keyed_simulator.requests[0]
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert body["max_tokens"] > 2048 and "temperature" not in body, "the API refuses a temperature with thinking"


async def test_history_becomes_tool_use_and_tool_result_blocks(claude, keyed_simulator):
    keyed_simulator.enqueue({"text": "Done."})
    claude.options = {"temperature": 0.3}
    claude.max_output_tokens = 512
    history = [
        {"role": "user", "content": "run `ls`"},
        {"role": "assistant", "content": "Running.", "tool_calls": [{"id": "t1", "name": "execute", "arguments": {}}]},
        {"role": "tool", "content": "README.md\n", "tool_call_id": "t1"},
        {"role": "user", "content": "and now?"},
    ]

    await collect(claude, history)

    body = keyed_simulator.requests[0]
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "run `ls`"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Running."},
                {"type": "tool_use", "id": "t1", "name": "execute", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "README.md\n"},
                {"type": "text", "text": "and now?"},
            ],
        },
    ]
    assert body["temperature"] == 0.3 and body["max_tokens"] == 512


@pytest.mark.parametrize(("finish", "stop_reason"), [("length", "max_tokens"), ("content_filter", "content_filter")])
async def test_anthropic_stop_reasons_map_to_ours(claude, keyed_simulator, finish, stop_reason):
    keyed_simulator.enqueue({"text": "cut", "finish_reason": finish})

    events = await collect(claude)

    assert events[-1] == TurnEnd(stop_reason)


async def test_rate_limit_answers_with_anthropic_error_json_and_retry_after(claude, keyed_simulator, no_retries):
    keyed_simulator.enqueue({"error": {"status": 429, "message": "Number of requests exceeded", "retry_after": 9}})

    with pytest.raises(ModelCallError) as error:
        await collect(claude)

    assert str(error.value).startswith("429: rate limited by 127.0.0.1:") and "(retry after 9 s)" in str(error.value)
    assert "Number of requests exceeded" in str(error.value)
    assert (error.value.status, error.value.retryable, error.value.retry_after) == (429, True, 9.0)


async def test_overloaded_529_is_retryable(claude, keyed_simulator, no_retries):
    keyed_simulator.enqueue({"error": {"status": 529, "message": "Overloaded"}})

    with pytest.raises(ModelCallError) as error:
        await collect(claude)

    assert str(error.value).startswith("529: ") and "Overloaded" in str(error.value) and error.value.retryable


@pytest.fixture
def wrong_key_claude(org, keyed_simulator) -> LanguageModel:
    return LanguageModelFactory(
        provider__organization=org,
        provider__name="Claude",
        provider__kind="anthropic",
        provider__base_url=keyed_simulator.root_url,
        provider__api_key_encrypted=encrypt_secret("sk-ant-WRONGKEY-0987654321"),
    )


async def test_a_wrong_key_says_401_and_never_shows_the_key(wrong_key_claude, no_retries):
    with pytest.raises(ModelCallError) as error:
        await collect(wrong_key_claude)

    assert str(error.value).startswith("401: the API key was rejected by 127.0.0.1:")
    assert "WRONGKEY" not in repr(error.value) and error.value.__cause__ is None


async def test_a_dropped_stream_is_a_clear_error(claude, keyed_simulator, no_retries):
    keyed_simulator.enqueue({"text": "this will be cut off somewhere", "drop_after_chunks": 4})

    with pytest.raises(ModelCallError) as error:
        await collect(claude)

    assert "dropped in the middle of the answer" in str(error.value)


def test_the_official_sdk_reads_the_simulator_stream_and_model_list(keyed_simulator):
    keyed_simulator.enqueue({"thinking": "hmm", "text": "ok", "tool_calls": [{"name": "execute", "arguments": {}}]})
    client = anthropic.Anthropic(base_url=keyed_simulator.root_url, api_key=SECRET_KEY, max_retries=0)

    with client.messages.stream(model="m", max_tokens=100, messages=[{"role": "user", "content": "hi"}]) as stream:
        message = stream.get_final_message()

    assert [block.type for block in message.content] == ["thinking", "text", "tool_use"]
    assert message.stop_reason == "tool_use" and message.content[2].input == {}
    assert "airlock-simulator" in [m.id for m in client.models.list().data]
