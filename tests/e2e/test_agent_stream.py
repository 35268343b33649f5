"""End to end over a real websocket: prompt -> model -> command in the workspace -> answer, all audited."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from django.core.management import call_command
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from audit.models import AuditEvent
from organizations.models import Role
from tests.factories import OrganizationFactory, UserFactory, make_member
from tests.livesrv import LivePortal, PortalClient

pytestmark = pytest.mark.timeout(90)

TERMINAL = {"idle", "failed"}


def open_stream(portal: LivePortal, client: PortalClient, session_id: str, after: int = 0):
    """A websocket on the session's stream, authenticated by the login session cookie."""
    return connect(
        f"{portal.ws_url}/ws/sessions/{session_id}/?after={after}",
        additional_headers={"Cookie": client.cookie_header},
        origin=portal.url,
        open_timeout=10,
    )


def read_until_done(ws: Any, events: list[dict], timeout: float = 30, stop_after: int | None = None) -> list[dict]:
    """Collect events until the turn ends (or `stop_after` events were read)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            event = json.loads(ws.recv(timeout=deadline - time.monotonic()))
        except TimeoutError:
            break
        events.append(event)
        if stop_after is not None and len(events) >= stop_after:
            return events
        if event["type"] == "status" and event["status"] in TERMINAL:
            return events
    raise AssertionError(f"the turn did not finish; events so far: {events}")


def start_session(client: PortalClient, prompt: str) -> dict:
    status, body = client.request("POST", "/api/v1/orgs/acme/sessions/", {"prompt": prompt})
    assert status == 201, body
    return body


def test_prompt_runs_a_command_and_streams_output_and_answer(live_portal: LivePortal):
    live_portal.simulator.enqueue(
        {"text": "Let me check.", "tool_calls": [{"name": "execute", "arguments": {"command": "echo hello"}}]},
        {"text": "The command printed hello.", "chunk_chars": 3},
    )
    client = live_portal.client()
    session = start_session(client, "Say hello from the shell")

    with open_stream(live_portal, client, session["id"]) as ws:
        events = read_until_done(ws, [])

    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), "every event once, in order"
    assert events[0] == {"seq": 1, "type": "prompt", "text": "Say hello from the shell", "user": "alice"}
    by_type: dict[str, list[dict]] = {}
    for event in events:
        by_type.setdefault(event["type"], []).append(event)
    assert by_type["tool.call"][0]["arguments"] == {"command": "echo hello"}
    assert [e["line"] for e in by_type["command.output"]] == ["hello"]
    assert by_type["command.finished"][0]["exit_code"] == 0
    answer = "".join(e["text"] for e in by_type["assistant.delta"] if e["step"] == 2)
    assert answer == "The command printed hello."
    assert by_type["assistant.message"][-1]["text"] == "The command printed hello."
    assert events[-1]["type"] == "status" and events[-1]["status"] == "idle"

    # The model saw the command's output as the tool result.
    tool_result = live_portal.simulator.requests[-1]["messages"][-1]
    assert tool_result["role"] == "tool" and "hello" in tool_result["content"]

    actions = list(AuditEvent.objects.filter(organization=live_portal.org).values_list("action", flat=True))
    for expected in ("prompt.submitted", "model.call", "tool.call", "workspace.command", "workspace.created"):
        assert expected in actions
    assert actions.count("model.call") == 2
    command_event = AuditEvent.objects.get(organization=live_portal.org, action="workspace.command")
    assert command_event.data["command"] == "echo hello" and command_event.data["exit_code"] == 0
    assert command_event.actor_type == "agent" and command_event.session_id == session["id"]
    call_command("audit", "verify", "--org", "acme")


def test_reconnect_with_after_misses_nothing_and_repeats_nothing(live_portal: LivePortal):
    slow = "for i in 1 2 3 4 5 6 7 8; do echo line$i; sleep 0.15; done"
    live_portal.simulator.enqueue(
        {"tool_calls": [{"name": "execute", "arguments": {"command": slow}}]},
        {"text": "Eight lines printed.", "chunk_chars": 2},
    )
    client = live_portal.client()
    session = start_session(client, "Print eight lines slowly")

    first: list[dict] = []
    with open_stream(live_portal, client, session["id"]) as ws:
        deadline = time.monotonic() + 30
        while not any(e.get("line") == "line3" for e in first):
            assert time.monotonic() < deadline, first
            first.append(json.loads(ws.recv(timeout=30)))
    last_seen = first[-1]["seq"]
    time.sleep(0.4)  # events keep coming while we are away

    with open_stream(live_portal, client, session["id"], after=last_seen) as ws:
        second = read_until_done(ws, [])

    combined = first + second
    assert [e["seq"] for e in combined] == list(range(1, len(combined) + 1))
    lines = [e["line"] for e in combined if e["type"] == "command.output"]
    assert lines == [f"line{i}" for i in range(1, 9)]
    status, stored = client.request("GET", f"/api/v1/orgs/acme/sessions/{session['id']}/events/?after=0&limit=5000")
    assert status == 200 and stored["results"] == combined


def test_member_of_another_org_gets_404_by_api_and_websocket(live_portal: LivePortal):
    live_portal.simulator.enqueue({"text": "Hi."})
    session = start_session(live_portal.client(), "hello")
    other = OrganizationFactory(slug="globex")
    make_member(other, UserFactory(username="oscar"), Role.OWNER, Role.AGENTS_USER)
    oscar = live_portal.client("oscar")

    assert oscar.request("GET", f"/api/v1/orgs/acme/sessions/{session['id']}/")[0] == 404
    assert oscar.request("GET", f"/api/v1/orgs/globex/sessions/{session['id']}/")[0] == 404
    assert oscar.request("GET", f"/api/v1/orgs/globex/sessions/{session['id']}/events/")[0] == 404
    with open_stream(live_portal, oscar, session["id"]) as ws, pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=10)
    assert closed.value.rcvd.code == 4404


def test_model_error_fails_the_turn_with_a_clear_message(live_portal: LivePortal):
    live_portal.simulator.enqueue(
        {"error": {"status": 500, "message": "upstream exploded"}},
        *[{"error": {"status": 500, "message": "upstream exploded"}}] * 4,
    )
    client = live_portal.client()
    session = start_session(client, "hello")
    with open_stream(live_portal, client, session["id"]) as ws:
        events = read_until_done(ws, [])
    assert events[-1]["status"] == "failed"
    errors = [e for e in events if e["type"] == "error"]
    assert errors and "500" in errors[0]["message"]
    failed_call = AuditEvent.objects.get(organization=live_portal.org, action="model.call")
    assert failed_call.outcome == "failure"
