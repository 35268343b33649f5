"""stream_turn: neutral events from a real model server over loopback, and errors an operator can act on."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from providers.clients import CallSummary, ModelCallError, TextDelta, ToolCallRequest, TurnEnd, Usage, stream_turn
from providers.models import LanguageModel
from providers.simulator import ModelSimulator
from tests.factories import LanguageModelFactory
from tests.providers.conftest import EXECUTE, SECRET_KEY, simulated_model

PROMPT = [{"role": "user", "content": "hello"}]


async def collect(model: LanguageModel, messages: list[dict] = PROMPT, **kwargs) -> list:
    """The events of one turn, without the CallSummary (tests of the summary look at it themselves)."""
    return [
        event
        async for event in stream_turn(
            model=model, system="You are helpful.", messages=messages, tools=[EXECUTE], **kwargs
        )
        if not isinstance(event, CallSummary)
    ]


async def failure(model: LanguageModel) -> ModelCallError:
    with pytest.raises(ModelCallError) as error:
        await collect(model)
    return error.value


@pytest.fixture
def model(org, simulator) -> LanguageModel:
    return LanguageModelFactory(provider__organization=org, provider__base_url=simulator.base_url, identifier="sim-1")


@pytest.fixture
def keyed_model(org, keyed_simulator) -> LanguageModel:
    """A model whose provider holds the right key (created by the service, so stored encrypted)."""
    return simulated_model(org, keyed_simulator.base_url, api_key=SECRET_KEY)


@pytest.fixture
def wrong_key_model(org, keyed_simulator) -> LanguageModel:
    return simulated_model(org, keyed_simulator.base_url, api_key="sk-test-WRONGKEY-0987654321")


@pytest.fixture
def unreachable_model(org) -> LanguageModel:
    return LanguageModelFactory(provider__organization=org, provider__base_url="http://127.0.0.1:9/v1")


@pytest.fixture
def undecryptable_model(org, simulator) -> LanguageModel:
    return LanguageModelFactory(
        provider__organization=org, provider__base_url=simulator.base_url, provider__api_key_encrypted="gAAAA-garbled"
    )


@pytest.fixture
def model_without_v1(org, simulator) -> LanguageModel:
    base = simulator.base_url.removesuffix("/v1")
    return LanguageModelFactory(provider__organization=org, provider__base_url=base, identifier="sim-1")


@pytest.fixture
def unknown_kind_model(org) -> LanguageModel:
    return LanguageModelFactory(provider__organization=org, provider__kind="mainframe", provider__name="Legacy")


async def test_text_turn_yields_deltas_then_usage_then_end_turn(model, simulator):
    simulator.enqueue(
        {"text": "Hello, world!", "chunk_chars": 4, "usage": {"prompt_tokens": 12, "completion_tokens": 3}}
    )

    events = await collect(model)

    assert events == [
        TextDelta("Hell"),
        TextDelta("o, w"),
        TextDelta("orld"),
        TextDelta("!"),
        Usage(input_tokens=12, output_tokens=3),
        TurnEnd(stop_reason="end_turn"),
    ]


async def test_tool_call_turn_yields_the_assembled_call_and_tool_use(model, simulator):
    simulator.enqueue(
        {
            "text": "Let me look.",
            "tool_calls": [
                {"id": "call_a", "name": "execute", "arguments": {"command": "echo hello"}},
                {"id": "call_b", "name": "execute", "arguments": {"command": "ls -la"}},
            ],
            "usage": {"prompt_tokens": 20, "completion_tokens": 9},
        }
    )

    events = await collect(model)

    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Let me look."
    calls = [e for e in events if isinstance(e, ToolCallRequest)]
    assert calls == [
        ToolCallRequest(
            id="call_a", name="execute", arguments={"command": "echo hello"}, raw_arguments='{"command": "echo hello"}'
        ),
        ToolCallRequest(
            id="call_b", name="execute", arguments={"command": "ls -la"}, raw_arguments='{"command": "ls -la"}'
        ),
    ]
    assert events[-2:] == [Usage(20, 9), TurnEnd("tool_use")]


async def test_malformed_tool_arguments_arrive_raw_with_empty_arguments(model, simulator):
    simulator.enqueue({"tool_calls": [{"id": "call_x", "name": "execute", "arguments": '{"command": "ls'}]})

    events = await collect(model)

    call = next(e for e in events if isinstance(e, ToolCallRequest))
    assert call.arguments == {} and call.raw_arguments == '{"command": "ls' and not call.arguments_valid


@pytest.mark.parametrize(
    ("finish_reason", "stop_reason"), [("length", "max_tokens"), ("content_filter", "content_filter")]
)
async def test_finish_reasons_map_to_our_stop_reasons(model, simulator, finish_reason, stop_reason):
    simulator.enqueue({"text": "cut", "finish_reason": finish_reason})

    events = await collect(model)

    assert events[-1] == TurnEnd(stop_reason)


async def test_request_carries_system_tools_history_and_correlation_headers(model, simulator):
    simulator.enqueue({"text": "ok"})
    history = [
        {"role": "user", "content": "run `ls`"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "call_1", "name": "execute", "arguments": {"command": "ls"}}],
        },
        {"role": "tool", "content": "README.md\n", "tool_call_id": "call_1"},
    ]

    await collect(model, history, correlation={"session_id": "sess-42", "user_id": "7"})

    [logged] = simulator.request_log
    body = logged["body"]
    assert body["model"] == "sim-1" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "run `ls`"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "execute", "arguments": '{"command": "ls"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "README.md\n"},
    ]
    assert body["tools"][0]["function"]["name"] == "execute"
    assert body["tools"][0]["function"]["parameters"]["required"] == ["command"]
    assert logged["headers"]["x-airlock-session-id"] == "sess-42"
    assert logged["headers"]["x-airlock-user-id"] == "7"


async def test_a_tool_call_left_without_result_gets_a_stand_in_so_the_conversation_stays_valid(model, simulator):
    simulator.enqueue({"text": "ok"})
    history = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "name": "execute", "arguments": {}}]},
        {"role": "user", "content": "are you there?"},
    ]

    await collect(model, history)

    roles = [(m["role"], m.get("tool_call_id")) for m in simulator.requests[0]["messages"]]
    assert roles == [("system", None), ("user", None), ("assistant", None), ("tool", "call_1"), ("user", None)]


async def test_consecutive_turns_reuse_one_connection(model, simulator):
    simulator.enqueue({"text": "one"}, {"text": "two"})

    await collect(model)
    await collect(model)

    ports = [entry["client_port"] for entry in simulator.request_log]
    assert len(ports) == 2 and ports[0] == ports[1]


async def test_429_with_retry_after_becomes_a_retryable_error_saying_when(model, simulator, no_retries):
    simulator.enqueue({"error": {"status": 429, "message": "rate limited", "retry_after": 3}})

    error = await failure(model)

    assert str(error).startswith("429: rate limited by 127.0.0.1:")
    assert "(retry after 3 s)" in str(error)
    assert (error.status, error.retryable, error.retry_after) == (429, True, 3.0)


async def test_a_transient_429_is_retried_and_the_turn_succeeds(model, simulator, settings):
    settings.PROVIDER_MAX_RETRIES = 2
    simulator.enqueue({"error": {"status": 429, "retry_after": 0.05}}, {"text": "made it"})

    events = await collect(model)

    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "made it"
    assert len(simulator.requests) == 2


async def test_500_becomes_a_retryable_error_quoting_the_provider(model, simulator, no_retries):
    simulator.enqueue({"error": {"status": 500, "message": "GPU on fire"}})

    error = await failure(model)

    assert str(error).startswith("500: 127.0.0.1:") and "GPU on fire" in str(error)
    assert (error.status, error.retryable) == (500, True)


async def test_404_names_the_model_identifier_to_check(model, simulator, no_retries):
    simulator.enqueue({"error": {"status": 404, "message": "The model `sim-1` does not exist"}})

    error = await failure(model)

    assert "404" in str(error) and "'sim-1'" in str(error) and "model identifier" in str(error)
    assert not error.retryable


async def test_dropped_connection_mid_stream_becomes_a_retryable_error(model, simulator):
    simulator.enqueue({"text": "this answer will be cut off", "drop_after_chunks": 3})

    error = await failure(model)

    assert "dropped in the middle of the answer" in str(error)
    assert error.retryable and error.status is None


async def test_refused_connection_says_whether_the_provider_runs(unreachable_model, no_retries):
    error = await failure(unreachable_model)

    assert str(error) == "Connection to 127.0.0.1:9 refused: is the provider running / is egress allowed?"
    assert error.retryable


async def test_slow_provider_times_out_with_a_clear_message(model, simulator, settings):
    settings.PROVIDER_MAX_RETRIES = 0
    settings.PROVIDER_TIMEOUT_SECONDS = 0.2
    simulator.enqueue({"text": "late", "delay": 1})

    error = await failure(model)

    assert "Timed out waiting for 127.0.0.1:" in str(error) and error.retryable


async def test_wrong_api_key_gives_401_message_without_the_key(wrong_key_model, keyed_simulator, no_retries):
    wrong_key = "sk-test-WRONGKEY-0987654321"

    error = await failure(wrong_key_model)

    host = keyed_simulator.base_url.split("/")[2]
    assert str(error) == f"401: the API key was rejected by {host}: set a valid key on provider 'Simulator'."
    assert wrong_key not in repr(error) and "WRONGKEY" not in str(error)
    assert error.__cause__ is None and (error.status, error.retryable) == (401, False)


async def test_right_api_key_is_sent_as_bearer_and_the_turn_succeeds(keyed_model, keyed_simulator):
    keyed_simulator.enqueue({"text": "authorized"})

    events = await collect(keyed_model)

    assert events[0] == TextDelta("auth")
    assert keyed_simulator.request_log[0]["headers"]["authorization"] == "Bearer ****7890"


async def test_vendor_text_that_echoes_the_key_is_scrubbed(keyed_model, keyed_simulator, no_retries):
    keyed_simulator.enqueue({"error": {"status": 400, "message": f"bad request from key {SECRET_KEY}"}})

    error = await failure(keyed_model)

    assert SECRET_KEY not in str(error) and "bad request from key ****" in str(error)
    assert str(error).startswith("400: ") and not error.retryable


@pytest.mark.django_db(transaction=True)
async def test_a_model_loaded_without_its_provider_still_streams(simulator):
    def make() -> int:
        from tests.factories import OrganizationFactory

        org = OrganizationFactory(slug="lazy")
        return simulated_model(org, simulator.base_url).pk

    try:
        pk = await sync_to_async(make)()
        model = await LanguageModel.objects.aget(pk=pk)  # provider not selected
        simulator.enqueue({"text": "lazy"})

        events = await collect(model)
    finally:
        await sync_to_async(connections.close_all)()  # the worker thread's connection, so the test DB can be dropped

    assert events[0] == TextDelta("lazy")


async def test_unknown_provider_kind_names_the_kinds_that_work(unknown_kind_model):
    error = await failure(unknown_kind_model)

    assert "Provider 'Legacy' has kind 'mainframe'" in str(error) and "openai-compatible" in str(error)


def test_simulator_default_turn_drives_stream_turn_through_a_command_round_trip(org):
    """The "Offline simulator" provider of `make run`: a command request, then a summary of its output."""
    import asyncio

    with ModelSimulator() as simulator:
        model = simulated_model(org, simulator.base_url)

        first = asyncio.run(collect(model, [{"role": "user", "content": "run `echo hello`"}]))
        call = next(e for e in first if isinstance(e, ToolCallRequest))
        history = [
            {"role": "user", "content": "run `echo hello`"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"id": call.id, "name": call.name, "arguments": call.arguments}],
            },
            {"role": "tool", "content": "hello\n", "tool_call_id": call.id},
        ]
        second = asyncio.run(collect(model, history))

    assert call.arguments == {"command": "echo hello"} and first[-1] == TurnEnd("tool_use")
    summary = "".join(e.text for e in second if isinstance(e, TextDelta))
    assert "I ran `echo hello`" in summary and "hello" in summary and second[-1] == TurnEnd("end_turn")
    assert json.dumps(simulator.requests).count("execute") >= 2


async def test_a_key_that_cannot_be_decrypted_says_to_set_it_again(undecryptable_model, simulator):
    error = await failure(undecryptable_model)

    assert "cannot be decrypted with AIRLOCK_ENCRYPTION_KEYS" in str(error) and "set the provider's API key" in str(
        error
    )
    assert simulator.requests == []


async def test_a_base_url_missing_v1_answers_404_pointing_at_the_base_url(model_without_v1, no_retries):
    error = await failure(model_without_v1)

    assert str(error).startswith("404: ") and "base URL" in str(error) and not error.retryable
