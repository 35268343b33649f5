"""The agent loop keeps the vendor's signed reasoning with the assistant message and sends it back next step.

The model servers refuse a tool-using conversation whose thinking went missing, as the real APIs do: a turn that
ends idle after a tool call with thinking on proves the reasoning was stored and replayed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from agents.models import AgentSession, Message
from agents.services import session_start
from portal.crypto import encrypt_secret
from providers.simulator import ModelSimulator, thinking_signature
from tests.agents.conftest import wait_for_turn
from tests.factories import LanguageModelFactory
from tests.fakes.bedrock_server import FakeBedrock, reasoning_signature

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(60),
    pytest.mark.usefixtures("close_async_orm_connections"),
]

KEY_ID = "AKIAAIRLOCKLOOPTEST01"
AWS_SECRET = "loopSECRETaccessKEY/airlock+0123456789"
THINKING = {"thinking_budget_tokens": 2048}


@pytest.fixture
def bedrock() -> Iterator[FakeBedrock]:
    with FakeBedrock(credentials={KEY_ID: AWS_SECRET}) as server:
        yield server


@pytest.fixture
def people(org, agents_user, settings, tmp_path):
    """acme and alice, who may run agents; workspaces under tmp_path, no retries."""
    settings.WORKSPACES_ROOT = tmp_path
    settings.PROVIDER_MAX_RETRIES = 0
    return org, agents_user


def claude_on(simulator: ModelSimulator, org, **kwargs):
    """An Anthropic model with extended thinking, served by the simulator's Messages API."""
    return LanguageModelFactory(
        provider__organization=org,
        provider__kind="anthropic",
        provider__name="Claude",
        provider__base_url=simulator.root_url,
        identifier="claude-sim-thinking",
        options=THINKING,
        is_default=True,
        **kwargs,
    )


async def run_prompt(user, org, prompt: str) -> tuple[AgentSession, list[Message]]:
    """Start a session and wait for its turn to end; the session and its conversation."""
    session = await wait_for_turn(await sync_to_async(session_start)(user=user, organization=org, prompt=prompt))
    messages = [m async for m in Message.objects.filter(session=session).order_by("position")]
    await sync_to_async(connections.close_all)()
    return session, messages


async def test_thinking_is_stored_with_the_assistant_message_and_sent_back_after_the_tool(people, simulator):
    org, user = people
    await sync_to_async(claude_on)(simulator, org)
    simulator.enqueue(
        {
            "thinking": "Run echo to see.",
            "text": "Running it.",
            "tool_calls": [{"id": "toolu_echo", "name": "execute", "arguments": {"command": "echo hi"}}],
        },
        {"thinking": "It printed hi.", "text": "It printed hi."},
    )

    session, messages = await run_prompt(user, org, "run `echo hi`")

    assert session.status == "idle", session.error
    assert [m.role for m in messages] == ["user", "assistant", "tool", "assistant"]
    thinking = {"type": "thinking", "thinking": "Run echo to see.", "signature": thinking_signature("Run echo to see.")}
    assert messages[1].reasoning == {"kind": "anthropic", "blocks": [thinking]}
    assert messages[3].reasoning["kind"] == "anthropic" and messages[3].content == "It printed hi."
    assert messages[0].reasoning == {} and messages[2].reasoning == {}
    second = simulator.requests[1]
    assert second["thinking"]["type"] == "enabled"
    assert second["messages"][1]["content"][0] == thinking, "the tool turn starts with its thinking, verbatim"


async def test_after_a_fallback_to_another_vendor_its_reasoning_is_not_sent_to_the_first(people, simulator, bedrock):
    org, user = people
    backup = await sync_to_async(LanguageModelFactory)(
        provider__organization=org,
        provider__kind="bedrock",
        provider__name="Bedrock",
        provider__base_url=bedrock.base_url,
        provider__region="us-east-1",
        provider__aws_access_key_id=KEY_ID,
        provider__api_key_encrypted=encrypt_secret(AWS_SECRET),
        identifier="anthropic.claude-sonnet-4-20250514-v1:0",
        options=THINKING,
        max_output_tokens=4096,
    )
    await sync_to_async(claude_on)(simulator, org, fallback=backup)
    simulator.enqueue({"error": {"status": 500, "message": "primary down"}}, {"thinking": "Done.", "text": "hi"})
    bedrock.enqueue(
        {
            "reasoning": "Echo it.",
            "tool_calls": [{"id": "tooluse_echo", "name": "execute", "arguments": {"command": "echo hi"}}],
        }
    )

    session, messages = await run_prompt(user, org, "run `echo hi`")

    assert session.status == "idle", session.error
    signed = {"text": "Echo it.", "signature": reasoning_signature("Echo it.")}
    assert messages[1].reasoning == {"kind": "bedrock", "blocks": [signed]}
    assert messages[3].reasoning["kind"] == "anthropic"
    # The next step went to the primary model again: Bedrock's reasoning stays out of the Anthropic request,
    # which therefore asks for no thinking (the API refuses a tool turn without signed thinking otherwise).
    answered = simulator.requests[-1]
    assert "thinking" not in answered
    assert [block["type"] for block in answered["messages"][1]["content"]] == ["tool_use"]
