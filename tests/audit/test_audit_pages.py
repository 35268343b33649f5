"""Audit pages: an auditor browses the log, opens one event whole and follows a session from prompt to command."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from audit import record
from audit.models import AuditEvent
from audit.services import AgentActor

SESSION = "3f0e6c1a-5b2d-4e8f-9a7b-111111111111"


@pytest.fixture
def session_log(org, other_org, agents_user, outsider) -> list[AuditEvent]:
    """One agent session: prompt, model call, command (failed), model call, command; plus noise."""
    agent = AgentActor(user=agents_user, session_id=SESSION)
    record(action="auth.login", actor=agents_user, organization=org)
    events = [
        record(
            action="prompt.submitted",
            actor=agents_user,
            organization=org,
            session_id=SESSION,
            data={"text": "Why does <script>alert(1)</script> break the build?"},
        ),
        record(
            action="model.call",
            actor=agent,
            organization=org,
            data={
                "model": "sim-1",
                "latency_ms": 120,
                "input_tokens": 50,
                "output_tokens": 9,
                "response_text": "Let me run the tests.",
                "tool_calls": [{"id": "c1", "name": "execute", "arguments": {"command": "make test"}}],
            },
        ),
        record(
            action="workspace.command",
            actor=agent,
            organization=org,
            outcome="failure",
            error="The command exited with status 2.",
            data={"command": "make test", "exit_code": 2, "duration_ms": 731, "output_head": "FAILED test_build"},
        ),
        record(
            action="model.call",
            actor=agent,
            organization=org,
            data={"model": "sim-1", "response_text": "Fixing the template.", "tool_calls": []},
        ),
        record(
            action="workspace.command",
            actor=agent,
            organization=org,
            data={"command": "make test", "exit_code": 0, "duration_ms": 512, "output_head": "all 12 passed"},
        ),
    ]
    record(action="prompt.submitted", actor=outsider, organization=other_org, data={"text": "globex secret plan"})
    return events


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_auditor_browses_the_log_as_a_table(session_log, auditor):
    response = _client(auditor).get("/orgs/acme/audit/")

    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="audit-events"' in html
    rows = re.findall(r'<tr class="outcome-(\w+)">', html)
    assert len(rows) == 6
    assert "workspace.command" in html and "auth.login" in html
    assert f"/orgs/acme/audit/sessions/{SESSION}/" in html
    assert "globex secret plan" not in html


def test_browse_filters_come_from_the_form(session_log, owner):
    response = _client(owner).get("/orgs/acme/audit/", {"action": "workspace.", "outcome": "failure"})

    html = response.content.decode()
    assert len(re.findall(r'<tr class="outcome-', html)) == 1
    assert 'value="workspace."' in html
    assert '<option value="failure" selected>' in html


def test_bad_filter_shows_what_to_fix(session_log, auditor):
    response = _client(auditor).get("/orgs/acme/audit/", {"since": "last tuesday"})

    assert response.status_code == 400
    assert "since" in response.content.decode()
    assert "ISO 8601" in response.content.decode()


def test_browse_pages_with_an_older_link(session_log, auditor):
    client = _client(auditor)

    first = client.get("/orgs/acme/audit/", {"limit": 4}).content.decode()
    older = re.search(r'href="\?([^"]+)" rel="next"', first).group(1).replace("&amp;", "&")
    second = client.get(f"/orgs/acme/audit/?{older}").content.decode()

    assert len(re.findall(r'<tr class="outcome-', first)) == 4
    assert len(re.findall(r'<tr class="outcome-', second)) == 2


def test_event_page_shows_the_event_whole(session_log, auditor):
    event = session_log[2]

    response = _client(auditor).get(f"/orgs/acme/audit/events/{event.pk}/")

    assert response.status_code == 200
    html = response.content.decode()
    for value in (str(event.pk), event.hash, event.prev_hash, "The command exited with status 2.", "FAILED test_build"):
        assert value in html
    assert "sequence 4 of" in html
    assert "&quot;exit_code&quot;: 2" in html


def test_session_timeline_runs_from_the_prompt_to_each_command_in_order(session_log, auditor):
    response = _client(auditor).get(f"/orgs/acme/audit/sessions/{SESSION}/")

    assert response.status_code == 200
    html = response.content.decode()
    titles = re.findall(r'class="step-title" href="[^"]+">([^<]+)</a>', html)
    assert titles == [
        "Prompt by alice",
        "Model call: sim-1",
        "Command",
        "Model call: sim-1",
        "Command",
    ]
    assert html.index("exit code</span> 2") < html.index("exit code</span> 0")
    assert "731 ms" in html and "FAILED test_build" in html and "all 12 passed" in html
    for event in session_log:
        assert f"/orgs/acme/audit/events/{event.pk}/" in html


def test_text_from_the_log_is_escaped(session_log, auditor):
    html = _client(auditor).get(f"/orgs/acme/audit/sessions/{SESSION}/").content.decode()

    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_each_page_view_is_audited_once(session_log, auditor):
    client = _client(auditor)

    client.get("/orgs/acme/audit/", {"actor": "alice"})
    client.get(f"/orgs/acme/audit/events/{session_log[0].pk}/")
    client.get(f"/orgs/acme/audit/sessions/{SESSION}/")

    viewed = AuditEvent.objects.filter(action="audit.viewed").order_by("sequence")
    assert [event.data["view"] for event in viewed] == ["page.browse", "page.event", "page.session"]
    assert viewed[0].data["filters"] == {"actor": "alice"}


def test_agents_user_is_forbidden_and_outsider_gets_404(session_log, agents_user, outsider):
    member, stranger = _client(agents_user), _client(outsider)
    event = session_log[0]

    for path in ("/orgs/acme/audit/", f"/orgs/acme/audit/events/{event.pk}/", f"/orgs/acme/audit/sessions/{SESSION}/"):
        assert member.get(path).status_code == 403
        assert stranger.get(path).status_code == 404


def test_foreign_event_id_answers_404(session_log, auditor):
    foreign = AuditEvent.objects.get(organization__slug="globex")

    assert _client(auditor).get(f"/orgs/acme/audit/events/{foreign.pk}/").status_code == 404


def test_anonymous_visitor_is_sent_to_sign_in(session_log):
    response = Client().get("/orgs/acme/audit/")

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
