"""The export API: owners and auditors stream the log in any format; others get 403 or 404; bad input says what."""

from __future__ import annotations

import csv
import io
import json
import warnings

import pytest

from audit.models import AuditEvent
from tests.api import api
from tests.audit.conftest import record_mixed_chain

STREAM = "/api/v1/orgs/acme/audit/export"


def body(response) -> str:
    """The whole streamed body."""
    assert response.streaming
    return b"".join(response.streaming_content).decode()


@pytest.fixture
def chain(org, agents_user) -> list[AuditEvent]:
    return record_mixed_chain(org, agents_user, count=6)


def test_owner_streams_json_lines_as_an_attachment(owner, chain):
    response = api(owner).get(STREAM, {"format": "jsonl"})

    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/x-ndjson")
    assert response["Content-Disposition"].startswith('attachment; filename="airlock-audit-acme-')
    assert response["Content-Disposition"].endswith('.jsonl"')
    lines = [json.loads(line) for line in body(response).splitlines()]
    assert [line["sequence"] for line in lines] == [event.sequence for event in chain]


def test_auditor_streams_csv(auditor, chain):
    response = api(auditor).get(STREAM, {"format": "csv"})

    assert response.status_code == 200
    rows = list(csv.DictReader(io.StringIO(body(response), newline="")))
    assert [row["action"] for row in rows] == [event.action for event in chain]
    assert response["Content-Disposition"].endswith('.csv"')


@pytest.mark.parametrize("export_format", ["ocsf", "cef"])
def test_auditor_streams_ocsf_and_cef(auditor, chain, export_format):
    response = api(auditor).get(STREAM, {"format": export_format})

    assert response.status_code == 200
    assert len(body(response).splitlines()) == len(chain)


def test_agents_user_gets_403_naming_the_roles(agents_user, chain):
    response = api(agents_user).get(STREAM, {"format": "jsonl"})

    assert response.status_code == 403
    assert "auditor" in response.json()["detail"]
    assert not AuditEvent.objects.filter(action="audit.exported").exists()


def test_plain_member_gets_403(plain_member, chain):
    assert api(plain_member).get(STREAM, {"format": "jsonl"}).status_code == 403


def test_outsider_gets_404_like_a_missing_organization(outsider, chain):
    assert api(outsider).get(STREAM, {"format": "jsonl"}).status_code == 404
    assert api(outsider).get("/api/v1/orgs/nope/audit/export", {"format": "jsonl"}).status_code == 404


def test_anonymous_is_refused(chain):
    assert api().get(STREAM, {"format": "jsonl"}).status_code in (401, 403)


def test_unknown_format_answers_400_naming_format(owner, chain):
    response = api(owner).get(STREAM, {"format": "xml"})

    assert response.status_code == 400
    assert "format" in response.json()
    assert "jsonl" in str(response.json()["format"])


def test_missing_format_answers_400(owner, chain):
    response = api(owner).get(STREAM)

    assert response.status_code == 400
    assert "format" in response.json()


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "2025-13-45"}, "until"),
        ({"since": "2025-02-01", "until": "2025-01-01"}, "until"),
    ],
)
def test_bad_dates_answer_400_naming_the_parameter(owner, chain, query, field):
    response = api(owner).get(STREAM, {"format": "jsonl", **query})

    assert response.status_code == 400
    assert list(response.json()) == [field]


def test_time_range_limits_the_stream(owner, chain):
    since = chain[2].occurred_at.isoformat().replace("+00:00", "Z")
    until = chain[4].occurred_at.isoformat()

    response = api(owner).get(STREAM, {"format": "jsonl", "since": since, "until": until})

    assert [json.loads(line)["sequence"] for line in body(response).splitlines()] == [3, 4]


def test_streamed_export_is_audited_before_the_body_is_read(owner, chain):
    response = api(owner).get(STREAM, {"format": "ocsf", "since": "2020-01-01"})

    event = AuditEvent.objects.get(action="audit.exported")  # written before any byte went out
    assert event.actor_display == "olivia"
    assert event.data == {
        "format": "ocsf",
        "since": "2020-01-01T00:00:00.000000Z",
        "until": None,
        "channel": "api",
        "row_count": None,
    }
    assert len(body(response).splitlines()) == len(chain)  # the export's own event is not in it


@pytest.mark.django_db(transaction=True)
async def test_asgi_server_streams_without_buffering_the_body(org, owner, agents_user):
    """Under ASGI (daphne) the body is an async stream: Django would otherwise read a sync one into a list."""
    from asgiref.sync import sync_to_async
    from django.db import connections
    from django.test import AsyncClient

    await sync_to_async(record_mixed_chain)(org, agents_user, 5)
    client = AsyncClient()
    await client.aforce_login(owner)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        response = await client.get(STREAM, {"format": "jsonl"})
        content = b"".join([chunk async for chunk in response.streaming_content])

    assert response.status_code == 200
    assert len(content.splitlines()) == 5
    assert not [w for w in caught if "consume synchronous iterators" in str(w.message)]
    await sync_to_async(connections.close_all)()  # the executor thread's connection, so the test DB can go
