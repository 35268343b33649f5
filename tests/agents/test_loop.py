"""The agent loop in-process: tools, refusals, step limits and the batching of the stream."""

from __future__ import annotations

from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async

from agents.models import SessionEvent
from agents.services import session_start
from audit.models import AuditEvent
from audit.verify import verify_chain
from organizations.models import MembershipRole, Role
from providers.models import LanguageModel, ModelCall
from tests.agents.conftest import start_and_run, wait_for_turn
from tests.factories import LanguageModelFactory, OrganizationFactory, UserFactory, make_member

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(60),
    pytest.mark.usefixtures("close_async_orm_connections"),
]


@pytest.fixture
def setup(simulator, settings, tmp_path):
    settings.WORKSPACES_ROOT = tmp_path
    org = OrganizationFactory(slug="acme")
    user = UserFactory(username="alice")
    make_member(org, user, Role.AGENTS_USER)
    model = LanguageModelFactory(provider__organization=org, provider__base_url=simulator.base_url, is_default=True)
    return org, user, model


async def test_unknown_tool_is_refused_and_the_model_is_told(setup, simulator):
    org, user, _ = setup
    simulator.enqueue({"tool_calls": [{"name": "browse", "arguments": {"url": "http://x"}}]}, {"text": "Sorry."})

    session, events = await start_and_run(user, org, "look it up")

    assert session.status == "idle"
    assert any(e["type"] == "error" and "Unknown tool 'browse'" in e["message"] for e in events)
    tool_result = simulator.requests[-1]["messages"][-1]
    assert tool_result["role"] == "tool" and "use one of `execute`" in tool_result["content"]
    refused = await AuditEvent.objects.aget(action="tool.call")
    assert refused.outcome == "failure"


async def test_user_who_lost_the_agents_role_cannot_have_commands_run(setup, simulator):
    org, user, _ = setup
    simulator.enqueue(
        {"delay": 1.0, "tool_calls": [{"name": "execute", "arguments": {"command": "echo hi"}}]}, {"text": "ok"}
    )
    session = await sync_to_async(session_start)(user=user, organization=org, prompt="run it")
    await MembershipRole.objects.filter(membership__user=user).adelete()  # while the model is thinking

    await wait_for_turn(session)

    finished = await SessionEvent.objects.filter(session=session, type="command.finished").afirst()
    assert finished is not None and "could not run" in finished.payload["error"]
    assert not await AuditEvent.objects.filter(action="workspace.command", outcome="success").aexists()


async def test_the_step_limit_ends_a_runaway_turn(setup, simulator, settings):
    org, user, _ = setup
    settings.AGENT_MAX_STEPS = 2
    simulator.enqueue(*[{"tool_calls": [{"name": "execute", "arguments": {"command": "true"}}]}] * 3)

    session, events = await start_and_run(user, org, "loop forever")

    assert session.status == "failed" and "after 2 steps" in session.error
    failed = await AuditEvent.objects.aget(action="session.failed")
    assert failed.outcome == "failure" and "after 2 steps" in failed.error and failed.session_id == str(session.pk)
    assert events[-1] == {"seq": events[-1]["seq"], "type": "status", "status": "failed", "error": session.error}


async def test_token_deltas_are_batched_and_lose_nothing(setup, simulator, settings):
    org, user, _ = setup
    settings.AGENT_DELTA_FLUSH_MS = 50
    text = "".join(f"word{i} " for i in range(400))
    simulator.enqueue({"text": text, "chunk_chars": 3})

    session, events = await start_and_run(user, org, "talk a lot")

    deltas = [e for e in events if e["type"] == "assistant.delta"]
    assert "".join(e["text"] for e in deltas) == text
    assert len(deltas) < len(text) // 3 / 5, "deltas should be coalesced into far fewer events than chunks"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


async def test_model_calls_carry_correlation_headers_and_are_audited_with_usage(setup, simulator):
    org, user, model = setup
    await LanguageModel.objects.filter(pk=model.pk).aupdate(
        input_price_per_mtok=Decimal("3"), output_price_per_mtok=Decimal("15")
    )
    simulator.enqueue({"text": "Hi there.", "usage": {"prompt_tokens": 1000, "completion_tokens": 500}})

    session, _ = await start_and_run(user, org, "hello")

    headers = simulator.request_log[-1]["headers"]
    assert headers["x-airlock-session-id"] == str(session.pk)
    assert headers["x-airlock-user-id"] == str(user.pk)
    call = await AuditEvent.objects.aget(action="model.call")
    assert call.data["input_tokens"] == 1000 and call.data["output_tokens"] == 500
    assert call.data["cost"] == "0.01050000" and call.data["attempts"] == 1
    stored = await ModelCall.objects.aget(pk=call.model_call_id)
    assert stored.cost == Decimal("0.0105") and stored.session_id == str(session.pk) and stored.status == "success"
    assert len(call.data["request_messages_sha256"]) == 64
    assert call.data["response_text"] == "Hi there." and call.data["model"] == model.identifier
    assert call.actor_type == "agent" and call.session_id == str(session.pk)
    result = await sync_to_async(verify_chain)(organization=org)
    assert result.ok, result.reason
