"""Opaque reasoning across turns: each adapter hands out the vendor's signed thinking and sends it back verbatim.

The loopback fakes refuse a tool-using conversation whose thinking went missing or was altered, as the real
APIs do, so a second turn that succeeds here proves the reasoning made the round trip through the official SDK.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import anthropic
import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from portal.crypto import encrypt_secret
from providers.clients import (
    CallSummary,
    ModelCallError,
    ReasoningDelta,
    ReasoningState,
    TextDelta,
    ToolCallRequest,
    TurnEnd,
    stream_turn,
)
from providers.clients import google as google_adapter
from providers.models import LanguageModel
from providers.simulator import ModelSimulator, thinking_signature
from tests.factories import LanguageModelFactory
from tests.fakes.bedrock_server import FakeBedrock, reasoning_signature
from tests.fakes.gemini_server import FAKE_THOUGHT_SIGNATURE, FakeGemini
from tests.providers.conftest import EXECUTE

PROMPT = {"role": "user", "content": "What is in the workspace?"}
LS = {"command": "ls -la /srv/app"}
KEY_ID = "AKIAAIRLOCKREASONING1"
AWS_SECRET = "reasoningSECRETaccessKEY/airlock+0123456"
GEMINI_KEY = "AIzaSyREASONING-GEMINI-KEY-0123456789"
BEDROCK_MODEL = "anthropic.claude-sonnet-4-20250514-v1:0"


@pytest.fixture(autouse=True)
def no_retries(settings) -> None:
    """A refused request surfaces from the first attempt."""
    settings.PROVIDER_MAX_RETRIES = 0


async def collect(model: LanguageModel, messages: list[dict]) -> list:
    """The events of one call, without the CallSummary."""
    events = stream_turn(model=model, system="Be terse.", messages=messages, tools=[EXECUTE])
    return [event async for event in events if not isinstance(event, CallSummary)]


def only(events: list, kind: type) -> list:
    return [event for event in events if isinstance(event, kind)]


def tool_round(events: list, output: str = "README.md\napp.py\n") -> list[dict]:
    """The history after a first call that asked for tools: prompt, the assistant turn as the loop stores it
    (reasoning included), and one result per call."""
    calls = only(events, ToolCallRequest)
    states = only(events, ReasoningState)
    assistant = {
        "role": "assistant",
        "content": "".join(e.text for e in only(events, TextDelta)),
        "tool_calls": [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in calls],
    }
    if states:
        assistant["reasoning"] = states[0].as_message_field()
    results = [{"role": "tool", "tool_call_id": c.id, "content": output} for c in calls]
    return [PROMPT, assistant, *results]


def foreign(history: list[dict], kind: str) -> list[dict]:
    """The same history as if another kind of vendor had answered the tool-using turn."""
    assistant = dict(history[1])
    assistant["reasoning"] = {**assistant["reasoning"], "kind": kind}
    return [history[0], assistant, *history[2:]]


# -- Anthropic Messages (the simulator) ------------------------------------------------------------------------


@pytest.fixture
def claude(org, simulator) -> LanguageModel:
    return LanguageModelFactory(
        provider__organization=org,
        provider__kind="anthropic",
        provider__name="Claude",
        provider__base_url=simulator.root_url,
        provider__api_key_encrypted=encrypt_secret("sk-ant-reasoning-0123456789"),
        identifier="claude-sim-thinking",
        options={"thinking_budget_tokens": 2048},
    )


def raw_claude(simulator: ModelSimulator, messages: list[dict], *, thinking: bool = True):
    """A request sent with the official SDK as is, without Airlock's adapter."""
    client = anthropic.Anthropic(base_url=simulator.root_url, api_key="unused", max_retries=0)
    extra = {"thinking": {"type": "enabled", "budget_tokens": 1024}} if thinking else {}
    return client.messages.create(model="claude-sim", max_tokens=4096, messages=messages, **extra)


UNSIGNED_TOOL_TURN = [
    {"role": "user", "content": "list it"},
    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "execute", "input": LS}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "a\n"}]},
]


def test_anthropic_fake_refuses_a_tool_turn_without_its_thinking_as_the_api_does(simulator):
    simulator.enqueue({"text": "never sent"})

    with pytest.raises(anthropic.BadRequestError) as refused:
        raw_claude(simulator, UNSIGNED_TOOL_TURN)

    error = refused.value.body["error"]
    assert refused.value.status_code == 400 and error["type"] == "invalid_request_error"
    assert error["message"].startswith(
        "messages.1.content.0.type: Expected `thinking` or `redacted_thinking`, but found `tool_use`."
    )
    assert simulator.pending_turns == 1, "a refused request does not consume the script"
    raw_claude(simulator, UNSIGNED_TOOL_TURN, thinking=False)  # the same history is fine without thinking


def test_anthropic_fake_refuses_thinking_whose_text_no_longer_matches_its_signature(simulator):
    thinking = {"type": "thinking", "thinking": "I will list it.", "signature": thinking_signature("I will list it.")}
    altered = {**thinking, "thinking": "I will delete it."}
    prompt, turn, results = UNSIGNED_TOOL_TURN

    raw_claude(simulator, [prompt, {**turn, "content": [thinking, *turn["content"]]}, results])
    with pytest.raises(anthropic.BadRequestError) as refused:
        raw_claude(simulator, [prompt, {**turn, "content": [altered, *turn["content"]]}, results])

    assert refused.value.body["error"]["message"] == "messages.1.content.0: Invalid `signature` in `thinking` block"


async def test_anthropic_thinking_and_redacted_thinking_make_the_round_trip(claude, simulator):
    simulator.enqueue(
        {
            "thinking": "The user wants a listing; run ls.",
            "redacted_thinking": "flagged part",
            "text": "Listing.",
            "tool_calls": [{"id": "toolu_ls", "name": "execute", "arguments": LS}],
        },
        {"thinking": "Two files.", "text": "README.md and app.py."},
    )

    first = await collect(claude, [PROMPT])
    [state] = only(first, ReasoningState)
    second = await collect(claude, tool_round(first))

    assert state.kind == "anthropic"
    thinking, redacted = state.blocks
    assert thinking == {
        "type": "thinking",
        "thinking": "The user wants a listing; run ls.",
        "signature": thinking_signature("The user wants a listing; run ls."),
    }
    assert redacted["type"] == "redacted_thinking" and redacted["data"]
    assert "".join(e.text for e in only(first, ReasoningDelta)) == "The user wants a listing; run ls."
    assert first.index(state) > first.index(only(first, ToolCallRequest)[-1]), "after the calls, before Usage"
    assert "".join(e.text for e in only(second, TextDelta)) == "README.md and app.py."
    assert second[-1] == TurnEnd("end_turn")
    body = simulator.requests[1]
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert body["messages"][1]["content"] == [
        thinking,
        redacted,
        {"type": "text", "text": "Listing."},
        {"type": "tool_use", "id": "toolu_ls", "name": "execute", "input": LS},
    ]


async def test_anthropic_drops_another_vendors_reasoning_and_thinks_no_more_for_that_request(claude, simulator):
    simulator.enqueue(
        {"thinking": "Run ls.", "tool_calls": [{"id": "toolu_ls", "name": "execute", "arguments": LS}]},
        {"text": "Two files."},
    )
    history = tool_round(await collect(claude, [PROMPT]))

    events = await collect(claude, foreign(history, "bedrock"))

    assert events[-1] == TurnEnd("end_turn")
    body = simulator.requests[1]
    assert "thinking" not in body, "the API refuses thinking when the tool turn has no signed thinking to return"
    assert [b["type"] for b in body["messages"][1]["content"]] == ["tool_use"]


async def test_anthropic_keeps_thinking_on_when_no_tool_turn_is_being_answered(claude, simulator):
    simulator.enqueue({"thinking": "Greet.", "text": "Hi."}, {"text": "Fine."})
    first = await collect(claude, [PROMPT])
    history = [
        PROMPT,
        {"role": "assistant", "content": "Hi.", "reasoning": only(first, ReasoningState)[0].as_message_field()},
        {"role": "user", "content": "How are you?"},
    ]

    await collect(claude, foreign(history, "google"))

    body = simulator.requests[1]
    assert body["thinking"]["type"] == "enabled"
    assert body["messages"][1]["content"] == [{"type": "text", "text": "Hi."}]


# -- Bedrock Converse (boto3 against the fake) -------------------------------------------------------------------


@pytest.fixture
def bedrock() -> Iterator[FakeBedrock]:
    with FakeBedrock(credentials={KEY_ID: AWS_SECRET}) as server:
        yield server


@pytest.fixture
def bedrock_claude(org, bedrock) -> LanguageModel:
    return LanguageModelFactory(
        provider__organization=org,
        provider__kind="bedrock",
        provider__name="Bedrock",
        provider__base_url=bedrock.base_url,
        provider__region="us-east-1",
        provider__aws_access_key_id=KEY_ID,
        provider__api_key_encrypted=encrypt_secret(AWS_SECRET),
        identifier=BEDROCK_MODEL,
        options={"thinking_budget_tokens": 2048},
        max_output_tokens=4096,
    )


def raw_converse(server: FakeBedrock, messages: list[dict]) -> list[dict]:
    """A converse_stream call with thinking on, made with boto3 as is."""
    client = boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=server.base_url,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=AWS_SECRET,
        config=Config(retries={"total_max_attempts": 1}),
    )
    response = client.converse_stream(
        modelId=BEDROCK_MODEL,
        messages=messages,
        additionalModelRequestFields={"thinking": {"type": "enabled", "budget_tokens": 1024}},
    )
    return list(response["stream"])


def test_bedrock_fake_refuses_a_tool_turn_without_its_reasoning_as_converse_does(bedrock):
    bedrock.enqueue({"text": "never sent"})
    tool_use = {"toolUse": {"toolUseId": "tooluse_1", "name": "execute", "input": LS}}
    result = {"toolResult": {"toolUseId": "tooluse_1", "content": [{"text": "a\n"}]}}
    history = [
        {"role": "user", "content": [{"text": "list it"}]},
        {"role": "assistant", "content": [tool_use]},
        {"role": "user", "content": [result]},
    ]

    with pytest.raises(ClientError) as refused:
        raw_converse(bedrock, history)

    error = refused.value.response
    assert error["Error"]["Code"] == "ValidationException"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    expected = "messages.1.content.0.type: Expected `thinking` or `redacted_thinking`, but found `tool_use`"
    assert expected in error["Error"]["Message"]
    forged = {"reasoningContent": {"reasoningText": {"text": "List it.", "signature": "Zm9yZ2Vk"}}}
    with pytest.raises(ClientError) as refused:
        raw_converse(bedrock, [history[0], {"role": "assistant", "content": [forged, tool_use]}, history[2]])
    assert "Invalid `signature`" in refused.value.response["Error"]["Message"]
    signed = {"reasoningContent": {"reasoningText": {"text": "List it.", "signature": reasoning_signature("List it.")}}}
    raw_converse(bedrock, [history[0], {"role": "assistant", "content": [signed, tool_use]}, history[2]])
    assert bedrock.pending_turns == 0, "only the accepted request consumed the script"


async def test_bedrock_reasoning_and_redacted_content_make_the_round_trip(bedrock_claude, bedrock):
    bedrock.enqueue(
        {
            "reasoning": "List the files first.",
            "redacted_reasoning": "hidden",
            "text": "Listing.",
            "tool_calls": [{"id": "tooluse_ls", "name": "execute", "arguments": LS}],
        },
        {"reasoning": "Two files.", "text": "README.md and app.py."},
    )

    first = await collect(bedrock_claude, [PROMPT])
    [state] = only(first, ReasoningState)
    second = await collect(bedrock_claude, tool_round(first))

    assert state.kind == "bedrock"
    signed, redacted = state.blocks
    assert signed == {"text": "List the files first.", "signature": reasoning_signature("List the files first.")}
    assert set(redacted) == {"redactedContent"} and base64.b64decode(redacted["redactedContent"])
    assert "".join(e.text for e in only(second, TextDelta)) == "README.md and app.py."
    body = bedrock.requests[1]
    assert body["additionalModelRequestFields"]["thinking"]["type"] == "enabled"
    assert body["messages"][1]["content"] == [
        {"reasoningContent": {"reasoningText": signed}},
        {"reasoningContent": {"redactedContent": redacted["redactedContent"]}},
        {"text": "Listing."},
        {"toolUse": {"toolUseId": "tooluse_ls", "name": "execute", "input": LS}},
    ]


async def test_bedrock_drops_another_vendors_reasoning_and_thinks_no_more_for_that_request(bedrock_claude, bedrock):
    bedrock.enqueue(
        {"reasoning": "Run ls.", "tool_calls": [{"id": "tooluse_ls", "name": "execute", "arguments": LS}]},
        {"text": "Two files."},
    )
    history = tool_round(await collect(bedrock_claude, [PROMPT]))

    events = await collect(bedrock_claude, foreign(history, "anthropic"))

    assert events[-1] == TurnEnd("end_turn")
    body = bedrock.requests[1]
    assert "additionalModelRequestFields" not in body
    assert [next(iter(block)) for block in body["messages"][1]["content"]] == ["toolUse"]


# -- Gemini (google-genai against the fake) ----------------------------------------------------------------------


@pytest.fixture
def gemini() -> Iterator[FakeGemini]:
    with FakeGemini(api_key=GEMINI_KEY) as server:
        yield server


@pytest.fixture
def gemini_model(org, gemini) -> LanguageModel:
    return LanguageModelFactory(
        provider__organization=org,
        provider__kind="google",
        provider__name="Gemini",
        provider__base_url=gemini.base_url,
        provider__api_key_encrypted=encrypt_secret(GEMINI_KEY),
        identifier="gemini-3-pro-preview",
        options={"reasoning_effort": "high"},
    )


def raw_gemini(server: FakeGemini, contents: list[dict]) -> None:
    """A streamed call made with google-genai as is."""
    client = genai.Client(api_key=GEMINI_KEY, http_options=genai_types.HttpOptions(base_url=server.base_url))
    list(client.models.generate_content_stream(model="gemini-3-pro-preview", contents=contents))


def test_gemini_fake_refuses_a_function_call_without_its_thought_signature_as_gemini_3_does(gemini):
    gemini.enqueue({"text": "never sent"})
    call = {"function_call": {"name": "execute", "args": LS}}
    answer = {"function_response": {"name": "execute", "response": {"output": "a\n"}}}

    with pytest.raises(genai_errors.ClientError) as refused:
        raw_gemini(
            gemini,
            [
                {"role": "user", "parts": [{"text": "list it"}]},
                {"role": "model", "parts": [call]},
                {"role": "user", "parts": [answer]},
            ],
        )

    assert refused.value.code == 400 and refused.value.status == "INVALID_ARGUMENT"
    assert refused.value.message.startswith("Function call is missing a thought_signature in functionCall parts.")
    with pytest.raises(genai_errors.ClientError) as refused:
        raw_gemini(
            gemini,
            [
                {"role": "user", "parts": [{"text": "list it"}]},
                {"role": "model", "parts": [{**call, "thought_signature": b"forged"}]},
                {"role": "user", "parts": [answer]},
            ],
        )
    assert refused.value.message == "Thought signature is not valid."
    assert gemini.pending_turns == 1


async def test_gemini_function_call_signature_makes_the_round_trip(gemini_model, gemini):
    signature = base64.b64encode(b"a signature minted for this very call").decode()
    gemini.enqueue(
        {"reasoning": "List it.", "tool_calls": [{"name": "execute", "arguments": LS}], "thought_signature": signature},
        {"text": "README.md and app.py."},
    )

    first = await collect(gemini_model, [PROMPT])
    [call] = only(first, ToolCallRequest)
    [state] = only(first, ReasoningState)
    second = await collect(gemini_model, tool_round(first))

    assert state.kind == "google"
    [block] = state.blocks
    assert block["call_id"] == call.id and base64.urlsafe_b64decode(block["signature"]) == base64.b64decode(signature)
    assert "".join(e.text for e in only(second, TextDelta)) == "README.md and app.py."
    [model_part] = gemini.requests[1]["contents"][1]["parts"]
    assert model_part["functionCall"] == {"name": "execute", "args": LS}
    assert base64.urlsafe_b64decode(model_part["thoughtSignature"]) == base64.b64decode(signature)


async def test_gemini_forged_signature_in_the_stored_reasoning_is_refused(gemini_model, gemini):
    gemini.enqueue({"tool_calls": [{"name": "execute", "arguments": LS}]})
    history = tool_round(await collect(gemini_model, [PROMPT]))
    history[1]["reasoning"]["blocks"][0]["signature"] = base64.urlsafe_b64encode(b"tampered").decode()

    with pytest.raises(ModelCallError) as refused:
        await collect(gemini_model, history)

    assert refused.value.status == 400 and "Thought signature is not valid" in str(refused.value)


@pytest.mark.parametrize(
    ("where", "parts"),
    [
        ("last", [{"text": "Hello th"}, {"text": "ere", "signed": True}]),
        ("separate", [{"text": "Hello there"}, {"text": "", "signed": True}]),
    ],
)
async def test_gemini_text_signature_goes_back_on_the_text_it_came_with(gemini_model, gemini, where, parts):
    gemini.enqueue({"text": "Hello there", "chunk_chars": 4, "text_signature": where}, {"text": "Fine."})

    first = await collect(gemini_model, [PROMPT])
    [state] = only(first, ReasoningState)
    history = [
        PROMPT,
        {"role": "assistant", "content": "Hello there", "reasoning": state.as_message_field()},
        {"role": "user", "content": "How are you?"},
    ]
    await collect(gemini_model, history)

    assert "".join(e.text for e in only(first, TextDelta)) == "Hello there"
    expected = [
        {"text": p["text"], "thoughtSignature": FAKE_THOUGHT_SIGNATURE} if p.get("signed") else {"text": p["text"]}
        for p in parts
    ]
    assert gemini.requests[1]["contents"][1]["parts"] == expected


async def test_gemini_drops_another_vendors_reasoning_and_sends_the_documented_placeholder(gemini_model, gemini):
    gemini.enqueue({"tool_calls": [{"name": "execute", "arguments": LS}]}, {"text": "Done."})
    history = tool_round(await collect(gemini_model, [PROMPT]))

    events = await collect(gemini_model, foreign(history, "anthropic"))

    assert events[-1] == TurnEnd("end_turn")
    [call_part] = gemini.requests[1]["contents"][1]["parts"]
    assert call_part["thoughtSignature"] == "skip_thought_signature_validator"


def test_gemini_signed_thought_goes_back_as_a_thought_before_the_answer():
    signature = base64.urlsafe_b64encode(b"thought signature").decode()
    message = {
        "role": "assistant",
        "content": "42",
        "reasoning": {"kind": "google", "blocks": [{"thought": "Compute it.", "signature": signature}]},
    }

    [content] = google_adapter.wire_contents([message])

    thought, answer = content.parts
    assert (thought.text, thought.thought, thought.thought_signature) == ("Compute it.", True, b"thought signature")
    assert (answer.text, answer.thought, answer.thought_signature) == ("42", None, None)
