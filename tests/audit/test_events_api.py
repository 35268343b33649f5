"""The audit events API: owners and auditors browse, filter and page the log; every query is itself audited."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from django.test import Client

from audit import record
from audit.context import bound
from audit.models import AuditEvent
from audit.services import AgentActor, SystemActor

SESSION = "7d1d2c3b-1111-4c5d-9e8f-000000000001"
OTHER_SESSION = "7d1d2c3b-2222-4c5d-9e8f-000000000002"


@pytest.fixture
def log(org, other_org, owner, agents_user, outsider) -> dict[str, AuditEvent]:
    """A small log: a session from prompt to command, a failed command, a settings change; globex has its own."""
    agent = AgentActor(user=agents_user, session_id=SESSION)
    with bound(request_id="req-a", source_ip="10.0.0.1", user_agent="pytest"):
        events = {
            "login": record(action="auth.login", actor=agents_user, organization=org, data={"method": "password"}),
            "prompt": record(
                action="prompt.submitted",
                actor=agents_user,
                organization=org,
                session_id=SESSION,
                data={"text": "Fix the flaky checkout test"},
            ),
            "model": record(
                action="model.call",
                actor=agent,
                organization=org,
                data={"model": "sim-1", "response_text": "Running the tests", "tool_calls": []},
            ),
            "command": record(
                action="workspace.command",
                actor=agent,
                organization=org,
                outcome="failure",
                error="The command exited with status 1.",
                data={"command": "pytest -q", "exit_code": 1, "duration_ms": 40, "output_head": "1 failed"},
            ),
            "other_session": record(
                action="prompt.submitted",
                actor=owner,
                organization=org,
                session_id=OTHER_SESSION,
                data={"text": "Ünïcode prompt about invoices"},
            ),
            "system": record(action="provider.key_rotated", actor=SystemActor("rotation"), organization=org),
            "foreign": record(
                action="prompt.submitted", actor=outsider, organization=other_org, data={"text": "checkout at globex"}
            ),
        }
    return events


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _list(client: Client, query: str = "", slug: str = "acme"):
    return client.get(f"/api/v1/orgs/{slug}/audit/events/{query}")


def _actions(response) -> list[str]:
    return [row["action"] for row in response.json()["results"]]


def test_auditor_lists_the_log_newest_first(log, auditor):
    response = _list(_client(auditor))

    assert response.status_code == 200
    body = response.json()
    assert [row["sequence"] for row in body["results"]] == [6, 5, 4, 3, 2, 1]
    assert body["next_cursor"] is None
    assert "checkout at globex" not in response.content.decode()


def test_owner_reads_one_event_whole(log, owner):
    event = log["command"]

    response = _client(owner).get(f"/api/v1/orgs/acme/audit/events/{event.pk}/")

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == str(event.pk)
    assert (body["hash"], body["prev_hash"]) == (event.hash, event.prev_hash)
    assert body["data"]["output_head"] == "1 failed"
    assert body["error"] == "The command exited with status 1."
    assert (body["source_ip"], body["request_id"], body["session_id"]) == ("10.0.0.1", "req-a", SESSION)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("?action=prompt.submitted", ["prompt.submitted", "prompt.submitted"]),
        ("?action=model.", ["model.call"]),
        ("?action=workspace.*", ["workspace.command"]),
        ("?outcome=failure", ["workspace.command"]),
        ("?actor=alice", ["workspace.command", "model.call", "prompt.submitted", "auth.login"]),
        ("?actor=olivia", ["prompt.submitted"]),
        (f"?session={SESSION}", ["workspace.command", "model.call", "prompt.submitted"]),
        ("?q=flaky", ["prompt.submitted"]),
        ("?q=FLAKY+checkout", ["prompt.submitted"]),
        ("?q=Ünïcode", ["prompt.submitted"]),
        ("?q=rotation", ["provider.key_rotated"]),
        ("?q=status+1", ["workspace.command"]),
        ("?action=prompt.submitted&actor=alice", ["prompt.submitted"]),
    ],
)
def test_filters_narrow_the_list(log, auditor, query, expected):
    response = _list(_client(auditor), query)

    assert response.status_code == 200, response.content
    assert _actions(response) == expected


def test_actor_filter_takes_a_user_id(log, auditor, agents_user):
    response = _list(_client(auditor), f"?actor={agents_user.pk}")

    assert _actions(response) == ["workspace.command", "model.call", "prompt.submitted", "auth.login"]


def test_time_range_filters(log, auditor):
    middle = log["model"].occurred_at
    client = _client(auditor)

    since = _list(client, f"?since={middle.isoformat().replace('+00:00', 'Z')}")
    until = _list(client, "?" + f"until={middle.isoformat()}".replace("+", "%2B"))
    future = _list(client, f"?since={(dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).date().isoformat()}")

    assert _actions(since) == ["provider.key_rotated", "prompt.submitted", "workspace.command", "model.call"]
    assert _actions(until) == ["model.call", "prompt.submitted", "auth.login"]
    assert _actions(future) == []


def test_cursor_pages_through_the_log_without_gaps(log, auditor):
    client = _client(auditor)

    first = _list(client, "?limit=4").json()
    second = _list(client, f"?limit=4&cursor={first['next_cursor']}").json()

    assert [row["sequence"] for row in first["results"]] == [6, 5, 4, 3]
    assert [row["sequence"] for row in second["results"]] == [2, 1]
    assert second["next_cursor"] is None


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("?since=yesterday", "since"),
        ("?until=2025-13-45", "until"),
        ("?since=2025-02-01&until=2025-01-01", "until"),
        ("?outcome=maybe", "outcome"),
        ("?limit=0", "limit"),
        ("?limit=100000", "limit"),
        ("?cursor=abc", "cursor"),
        ("?session=" + "x" * 65, "session"),
    ],
)
def test_bad_filter_values_answer_400_naming_the_parameter(log, auditor, query, parameter):
    response = _list(_client(auditor), query)

    assert response.status_code == 400
    assert parameter in response.json()


def test_agents_user_is_forbidden(log, agents_user):
    client = _client(agents_user)

    assert _list(client).status_code == 403
    assert client.get(f"/api/v1/orgs/acme/audit/events/{log['prompt'].pk}/").status_code == 403
    assert client.get(f"/api/v1/orgs/acme/audit/sessions/{SESSION}/timeline/").status_code == 403


def test_plain_member_is_forbidden(log, plain_member):
    assert _list(_client(plain_member)).status_code == 403


def test_outsider_gets_404(log, outsider):
    client = _client(outsider)

    assert _list(client).status_code == 404
    assert client.get(f"/api/v1/orgs/acme/audit/events/{log['prompt'].pk}/").status_code == 404
    assert client.get(f"/api/v1/orgs/acme/audit/sessions/{SESSION}/timeline/").status_code == 404


def test_anonymous_is_refused(log):
    assert _list(Client()).status_code in (401, 403)


def test_another_organizations_event_id_answers_404(log, auditor):
    client = _client(auditor)

    assert client.get(f"/api/v1/orgs/acme/audit/events/{log['foreign'].pk}/").status_code == 404
    assert client.get(f"/api/v1/orgs/acme/audit/events/{uuid.uuid4()}/").status_code == 404


def test_session_timeline_lists_the_sessions_events_in_order(log, auditor):
    response = _client(auditor).get(f"/api/v1/orgs/acme/audit/sessions/{SESSION}/timeline/")

    assert response.status_code == 200
    assert _actions(response) == ["prompt.submitted", "model.call", "workspace.command"]


def test_unknown_or_foreign_session_timeline_answers_404(log, auditor, outsider):
    client = _client(auditor)

    assert client.get("/api/v1/orgs/acme/audit/sessions/no-such-session/timeline/").status_code == 404


def test_every_query_of_the_log_is_audited(log, auditor):
    client = _client(auditor)

    _list(client, "?action=model.&q=tests")
    client.get(f"/api/v1/orgs/acme/audit/events/{log['model'].pk}/")
    client.get(f"/api/v1/orgs/acme/audit/sessions/{SESSION}/timeline/")

    viewed = list(AuditEvent.objects.filter(action="audit.viewed").order_by("sequence"))
    assert [event.data["view"] for event in viewed] == ["events.list", "events.detail", "sessions.timeline"]
    assert viewed[0].data["filters"] == {"action": "model.", "q": "tests"}
    assert viewed[0].data["page"] == {"cursor": None, "limit": 50, "returned": 1}
    assert viewed[1].data["event_id"] == str(log["model"].pk)
    assert {event.actor_display for event in viewed} == {"audrey"}
    assert not AuditEvent.objects.filter(organization__slug="globex", action="audit.viewed").exists()


def test_a_page_of_the_log_costs_a_fixed_number_of_queries(log, org, auditor, django_assert_max_num_queries):
    client = _client(auditor)
    _list(client)  # warm the session and the content-policy cache
    with django_assert_max_num_queries(15) as small:
        assert len(_list(client, "?limit=50&action=auth.login").json()["results"]) == 1
    for index in range(40):
        record(action="auth.login", actor=auditor, organization=org, data={"n": index})

    with django_assert_max_num_queries(15) as large:
        response = _list(client, "?limit=50&action=auth.login")

    assert len(response.json()["results"]) == 41
    assert len(large.captured_queries) == len(small.captured_queries)
    reads = [query["sql"] for query in large.captured_queries if query["sql"].startswith("SELECT")]
    assert sum('FROM "audit_auditevent"' in sql for sql in reads) == 1
