"""Hostile input to the audit log's API and pages: a 4xx that says what to fix, never a 500."""

from __future__ import annotations

import pytest
from django.test import Client

from audit import record
from audit.models import AuditDestination, AuditExport
from tests.api import api

EVENTS = "/api/v1/orgs/acme/audit/events/"
EXPORT = "/api/v1/orgs/acme/audit/export"
EXPORTS = "/api/v1/orgs/acme/audit/exports/"
DESTINATIONS = "/api/v1/orgs/acme/audit/destinations/"


# Valid ISO 8601, but past year 9999 or before year 1 once moved to UTC.
OUT_OF_RANGE = ["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+14:00"]


@pytest.mark.parametrize("moment", OUT_OF_RANGE)
@pytest.mark.parametrize("name", ["since", "until"])
def test_a_time_out_of_range_is_a_400_naming_the_parameter(owner, name, moment) -> None:
    client = api(owner)

    answers = [
        client.get(EVENTS, {name: moment}),
        client.get(EXPORT, {"format": "jsonl", name: moment}),
        client.post(EXPORTS, {"format": "jsonl", name: moment}, format="json"),
    ]

    for response in answers:
        assert response.status_code == 400, response.content
        assert "out of range" in str(response.json()[name])
    assert not AuditExport.objects.exists()


def test_the_events_page_says_a_time_is_out_of_range(owner) -> None:
    client = Client()
    client.force_login(owner)

    response = client.get("/orgs/acme/audit/", {"since": OUT_OF_RANGE[0]})

    assert response.status_code == 400
    assert "out of range" in response.content.decode()


@pytest.mark.parametrize("session", ["%00", "a%00b", "s" * 65])
def test_a_session_id_no_event_can_have_answers_404(org, owner, session) -> None:
    record(action="prompt.submitted", actor=owner, organization=org, session_id="s-1")
    page = Client()
    page.force_login(owner)

    assert api(owner).get(f"/api/v1/orgs/acme/audit/sessions/{session}/timeline/").status_code == 404
    assert page.get(f"/orgs/acme/audit/sessions/{session}/").status_code == 404


def test_a_huge_page_limit_gives_the_largest_page_and_a_huge_offset_an_empty_one(org, owner) -> None:
    AuditExport.objects.bulk_create([AuditExport(organization=org, format="jsonl") for _ in range(501)])
    AuditDestination.objects.create(organization=org, name="d", kind="splunk-hec", url="https://siem")
    huge = "99999999999999999999"

    largest = api(owner).get(EXPORTS, {"limit": huge})
    assert largest.status_code == 200 and len(largest.json()["results"]) == 500
    for path in (EXPORTS, DESTINATIONS):
        response = api(owner).get(path, {"limit": huge, "offset": huge})
        assert response.status_code == 200, response.content
        assert response.json()["results"] == []


def test_a_lowercase_z_is_utc_as_an_uppercase_one(owner) -> None:
    response = api(owner).get(EXPORT, {"format": "jsonl", "since": "2025-01-31T00:00:00z"})

    assert response.status_code == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (EXPORTS, '{"format": "\\ud800"}'),
        (DESTINATIONS, '{"name": "n", "kind": "\\udfff"}'),
        (DESTINATIONS, '{"name": "n", "kind": "splunk-hec", "url": "https://s", "options": {"index": "a\\u0000b"}}'),
    ],
)
def test_json_text_no_database_can_store_is_a_400_naming_the_field(owner, path, body) -> None:
    response = api(owner).post(path, body, content_type="application/json")

    assert response.status_code == 400
    assert "valid Unicode" in response.json()["detail"]
    assert not AuditDestination.objects.exists() and not AuditExport.objects.exists()
