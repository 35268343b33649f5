"""The audit settings page: owners change what events keep and how long; auditors read it; the SIEM lag shows."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

import audit.forwarding as forwarding
from audit import record
from audit.forwarding.delivery import deliver_destination
from audit.forwarding.services import destination_create
from audit.models import AuditDestination, AuditEvent, AuditSettings
from audit.retention import audit_retention_update
from audit.settings_services import audit_settings_update
from tests.fakes.siem import SyslogReceiver

PAGE = "/orgs/acme/audit/settings/"


@pytest.fixture(autouse=True)
def fresh_forwarding_cache(settings: Any) -> Iterator[None]:
    """No destination list cached across tests, and a failed delivery gives up quickly."""
    settings.AUDIT_FORWARDING_TIMEOUT_SECONDS = 3
    forwarding.forget_destinations()
    yield
    forwarding.forget_destinations()


def _client(user: Any = None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def _policy_post(**fields: str) -> dict[str, str]:
    return {"section": "policy", "content_policy": "full", "redaction_patterns": "", **fields}


def _retention_post(**fields: str) -> dict[str, str]:
    return {"section": "retention", "retention_days": "", "legal_hold_reason": "", **fields}


def _field_errors(html: str, field: str) -> list[str]:
    """The error messages shown inside one field's block of the page."""
    block = re.search(rf'id="field-{field}".*?(?=id="field-|</form>)', html, re.DOTALL)
    assert block, f"no field {field} on the page"
    return re.findall(r'<p class="field-error" role="alert">(.*?)</p>', block.group(0), re.DOTALL)


def _settings(org: Any) -> AuditSettings | None:
    return AuditSettings.objects.filter(organization=org).first()


# --- content policy ---------------------------------------------------------------------------------------


def test_owner_switches_to_digest_and_the_next_prompt_keeps_only_its_digest(org, owner, agents_user):
    client = _client(owner)

    response = client.post(PAGE, _policy_post(content_policy="digest"), follow=True)

    assert response.status_code == 200
    assert response.redirect_chain == [(PAGE, 302)]
    html = response.content.decode()
    assert "Saved the content policy." in html
    assert re.search(r'<input type="radio" name="content_policy" value="digest"[^>]*checked', html)
    prompt = "Summarise the incident report for ward 7"
    event = record(action="prompt.submitted", actor=agents_user, organization=org, data={"text": prompt})
    stored = AuditEvent.objects.get(pk=event.pk).data["text"]
    assert stored == {"sha256": hashlib.sha256(prompt.encode()).hexdigest(), "length": len(prompt)}
    changed = AuditEvent.objects.get(organization=org, action="audit.settings_changed")
    assert changed.actor_id == str(owner.pk)
    assert changed.data["before"]["content_policy"] == "full"
    assert changed.data["after"]["content_policy"] == "digest"


def test_owner_saves_redaction_patterns_one_per_line(org, owner, agents_user):
    response = _client(owner).post(
        PAGE, _policy_post(content_policy="redacted", redaction_patterns="PATIENT-\\d+\r\n\r\nward \\d+\r\n")
    )

    assert response.status_code == 302
    assert _settings(org).redaction_patterns == ["PATIENT-\\d+", "ward \\d+"]
    event = record(
        action="prompt.submitted", actor=agents_user, organization=org, data={"text": "PATIENT-4711 on ward 7"}
    )
    assert AuditEvent.objects.get(pk=event.pk).data["text"] == "[REDACTED:pattern] on [REDACTED:pattern]"


def test_invalid_regex_is_an_error_on_its_line_and_changes_nothing(org, owner):
    audit_settings_update(actor=owner, organization=org, content_policy="redacted", redaction_patterns=["SECRET-\\d+"])
    events_before = AuditEvent.objects.filter(organization=org).count()

    response = _client(owner).post(
        PAGE, _policy_post(content_policy="digest", redaction_patterns="PATIENT-\\d+\n\nward (\\d+\n")
    )

    assert response.status_code == 200
    html = response.content.decode()
    [error] = _field_errors(html, "redaction_patterns")
    assert error.startswith("Line 3:") and "not a valid regular expression" in error
    assert "Nothing was saved" in html
    assert "ward (\\d+" in html  # what the owner typed is still there to fix
    row = _settings(org)
    assert (row.content_policy, row.redaction_patterns) == ("redacted", ["SECRET-\\d+"])
    assert AuditEvent.objects.filter(organization=org).count() == events_before


def test_a_pattern_that_would_backtrack_for_hours_masks_the_text_whole_instead(org, owner, agents_user, settings):
    settings.AUDIT_REDACTION_TIMEOUT_SECONDS = 0.05
    _client(owner).post(PAGE, _policy_post(content_policy="redacted", redaction_patterns="(a|aa)+$"))
    hostile = "a" * 60 + "!"  # Python's re needs about 2**40 steps to give up on this text
    began = time.monotonic()

    event = record(action="prompt.submitted", actor=agents_user, organization=org, data={"text": hostile, "n": 1})

    assert time.monotonic() - began < 5
    stored = AuditEvent.objects.get(pk=event.pk).data
    assert hostile not in str(stored)
    assert set(stored.values()) == {"[REDACTED:pattern-unavailable]", 1}


def test_look_arounds_and_unicode_classes_mask_as_python_patterns_do(org, owner, agents_user):
    _client(owner).post(PAGE, _policy_post(content_policy="redacted", redaction_patterns="(?<=MRN-)\\d+\n\\bJos\\w+"))

    event = record(
        action="prompt.submitted", actor=agents_user, organization=org, data={"text": "José has MRN-١٢٣ and MRN-42"}
    )

    assert AuditEvent.objects.get(pk=event.pk).data == {
        "text": "[REDACTED:pattern] has MRN-[REDACTED:pattern] and MRN-[REDACTED:pattern]"
    }


def test_a_pattern_holding_a_line_separator_stays_one_pattern(org, owner):
    _client(owner).post(PAGE, _policy_post(content_policy="redacted", redaction_patterns="PATIENT\u2028ID\nward"))

    assert _settings(org).redaction_patterns == ["PATIENT\u2028ID", "ward"]


def test_a_pattern_the_service_refuses_is_shown_next_to_the_field(org, owner):
    response = _client(owner).post(PAGE, _policy_post(content_policy="redacted", redaction_patterns="x*"))

    assert response.status_code == 200
    [error] = _field_errors(response.content.decode(), "redaction_patterns")
    assert "Line 1" in error and "matches empty text" in error
    assert _settings(org) is None


def test_an_unknown_policy_is_a_field_error_not_a_crash(org, owner):
    response = _client(owner).post(PAGE, _policy_post(content_policy="everything"))

    assert response.status_code == 200
    assert _field_errors(response.content.decode(), "content_policy")
    assert _settings(org) is None


def test_saving_the_same_policy_says_nothing_changed(org, owner):
    response = _client(owner).post(PAGE, _policy_post(), follow=True)

    assert "Nothing changed." in response.content.decode()
    assert not AuditEvent.objects.filter(organization=org, action="audit.settings_changed").exists()


# --- retention and legal hold -----------------------------------------------------------------------------


def test_owner_sets_retention_days_and_the_change_is_audited(org, owner):
    client = _client(owner)

    response = client.post(PAGE, _retention_post(retention_days="90"), follow=True)

    html = response.content.decode()
    assert "Saved retention and legal hold." in html
    assert re.search(r'name="retention_days" value="90"', html)
    assert _settings(org).retention_days == 90
    updated = AuditEvent.objects.get(organization=org, action="audit.retention_updated")
    assert updated.actor_id == str(owner.pk)
    assert updated.data["before"]["retention_days"] is None
    assert updated.data["after"]["retention_days"] == 90

    client.post(PAGE, _retention_post(retention_days=""))

    assert _settings(org).retention_days is None  # empty: keep forever
    assert AuditEvent.objects.filter(organization=org, action="audit.retention_updated").count() == 2


@pytest.mark.parametrize(("days", "words"), [("0", "greater than or equal to 1"), ("soon", "whole number")])
def test_bad_retention_days_are_a_field_error(org, owner, days, words):
    response = _client(owner).post(PAGE, _retention_post(retention_days=days))

    assert response.status_code == 200
    [error] = _field_errors(response.content.decode(), "retention_days")
    assert words in error
    assert _settings(org) is None


def test_legal_hold_without_a_reason_is_refused(org, owner):
    response = _client(owner).post(PAGE, _retention_post(legal_hold="on", legal_hold_reason="   "))

    assert response.status_code == 200
    [error] = _field_errors(response.content.decode(), "legal_hold_reason")
    assert "needs a reason" in error
    assert _settings(org) is None or not _settings(org).legal_hold
    assert not AuditEvent.objects.filter(organization=org, action="audit.retention_updated").exists()


def test_a_reason_alone_does_not_put_a_hold_on(org, owner):
    response = _client(owner).post(PAGE, _retention_post(legal_hold_reason="Case 2025-17"))

    assert response.status_code == 200
    [error] = _field_errors(response.content.decode(), "legal_hold_reason")
    assert "turning the legal hold on" in error
    assert _settings(org) is None or not _settings(org).legal_hold


def test_owner_puts_a_hold_on_with_a_reason_and_lifts_it_saying_why(org, owner):
    client = _client(owner)

    client.post(PAGE, _retention_post(retention_days="30", legal_hold="on", legal_hold_reason="Case 2025-17"))

    row = _settings(org)
    assert (row.retention_days, row.legal_hold, row.legal_hold_reason) == (30, True, "Case 2025-17")
    page = client.get(PAGE).content.decode()
    assert 'name="release_reason"' in page

    client.post(
        PAGE,
        _retention_post(retention_days="30", legal_hold_reason="Case 2025-17", release_reason="Case closed"),
    )

    row = _settings(org)
    assert (row.legal_hold, row.legal_hold_reason) == (False, "")
    lifted = AuditEvent.objects.filter(organization=org, action="audit.retention_updated").order_by("-sequence")[0]
    assert lifted.data["release_reason"] == "Case closed"
    assert lifted.data["before"]["legal_hold_reason"] == "Case 2025-17"


def test_a_held_reason_cannot_be_emptied(org, owner):
    audit_retention_update(actor=owner, organization=org, legal_hold=True, legal_hold_reason="Case 9")

    response = _client(owner).post(PAGE, _retention_post(legal_hold="on", legal_hold_reason=""))

    assert _field_errors(response.content.decode(), "legal_hold_reason")
    assert _settings(org).legal_hold_reason == "Case 9"


# --- who sees what ----------------------------------------------------------------------------------------


def test_auditor_sees_the_values_but_no_form_and_cannot_post(org, owner, auditor):
    audit_settings_update(actor=owner, organization=org, content_policy="digest", redaction_patterns=["MRN-\\d+"])
    audit_retention_update(
        actor=owner, organization=org, retention_days=400, legal_hold=True, legal_hold_reason="Case 2025-17"
    )
    client = _client(auditor)

    response = client.get(PAGE)

    assert response.status_code == 200
    html = response.content.decode()
    for shown in ("Digest only", "MRN-\\d+", "400 days", "Case 2025-17", "only owners change them"):
        assert shown in html
    assert 'name="section"' not in html and "<textarea" not in html and 'type="radio"' not in html
    for body in (_policy_post(content_policy="full"), _retention_post(retention_days="1")):
        assert client.post(PAGE, body).status_code == 403
    row = _settings(org)
    assert (row.content_policy, row.retention_days, row.legal_hold) == ("digest", 400, True)


def test_owner_sees_the_forms(org, owner):
    html = _client(owner).get(PAGE).content.decode()

    assert html.count('name="section"') == 2
    for value in ("full", "redacted", "digest"):
        assert f'name="content_policy" value="{value}"' in html
    assert "keep every event forever" in html


def test_members_without_the_audit_role_get_403_and_other_organizations_404(org, agents_user, plain_member, outsider):
    for member in (agents_user, plain_member):
        client = _client(member)
        assert client.get(PAGE).status_code == 403
        assert client.post(PAGE, _policy_post(content_policy="digest")).status_code == 403
    stranger = _client(outsider)  # the owner of globex
    assert stranger.get(PAGE).status_code == 404
    assert stranger.post(PAGE, _policy_post(content_policy="digest")).status_code == 404
    assert _settings(org) is None


def test_anonymous_visitor_is_sent_to_sign_in(org):
    response = _client().get(PAGE)

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_audit_pages_link_to_the_settings_for_owners_and_auditors(org, owner, auditor):
    for user in (owner, auditor):
        for path in ("/orgs/acme/audit/", PAGE):
            nav = re.search(r'<nav[^>]*id="audit-nav".*?</nav>', _client(user).get(path).content.decode(), re.DOTALL)
            assert nav and f'href="{PAGE}"' in nav.group(0)


def test_an_unknown_section_is_a_bad_request(org, owner):
    assert _client(owner).post(PAGE, {"section": "everything"}).status_code == 400


# --- SIEM destinations ------------------------------------------------------------------------------------


def _destination_row(html: str, destination: AuditDestination) -> str:
    row = re.search(rf'<tr id="destination-{destination.pk}">.*?</tr>', html, re.DOTALL)
    assert row, f"no row for {destination.name}"
    return row.group(0)


def test_destination_lag_last_delivery_and_last_error_appear_on_the_page(org, owner, auditor):
    down = SyslogReceiver().start()
    down.stop()  # nothing listens on this port any more
    receiver = SyslogReceiver().start()
    try:
        archive = destination_create(
            actor=owner, organization=org, name="archive", kind="syslog", host="127.0.0.1", port=receiver.port
        )
        siem = destination_create(
            actor=owner, organization=org, name="siem", kind="syslog", host="127.0.0.1", port=down.port
        )
        for index in range(3):
            record(action="prompt.submitted", actor=owner, organization=org, data={"n": index})
        assert deliver_destination(archive.pk, force=True).error == ""
        assert deliver_destination(siem.pk, force=True).error
    finally:
        receiver.stop()

    html = _client(auditor).get(PAGE).content.decode()

    siem_row = _destination_row(html, siem)
    assert "syslog" in siem_row and "enabled" in siem_row
    assert "4 events" in siem_row  # its own creation event and three prompts, none acknowledged
    assert f"cannot deliver to 127.0.0.1:{down.port}" in siem_row
    assert "never" in siem_row
    archive_row = _destination_row(html, archive)
    assert "0 events" in archive_row and "none" in archive_row
    delivered_at = AuditDestination.objects.get(pk=archive.pk).last_success_at
    assert delivered_at.strftime("%Y-%m-%d %H:%M:%S") in archive_row


def test_destination_table_costs_the_same_queries_for_one_or_many(org, owner):
    client = _client(owner)
    destination_create(actor=owner, organization=org, name="d0", kind="syslog", host="siem", port=514)
    client.get(PAGE)  # warm the session and content types

    with CaptureQueriesContext(connection) as one:
        assert client.get(PAGE).status_code == 200
    for index in range(1, 5):
        destination_create(actor=owner, organization=org, name=f"d{index}", kind="syslog", host="siem", port=514)
    with CaptureQueriesContext(connection) as five:
        html = client.get(PAGE).content.decode()

    assert html.count('<tr id="destination-') == 5
    assert len(five.captured_queries) == len(one.captured_queries)


def test_other_organizations_destinations_are_not_listed(org, other_org, owner, outsider):
    destination_create(actor=outsider, organization=other_org, name="globex-siem", kind="syslog", host="h", port=514)

    html = _client(owner).get(PAGE).content.decode()

    assert "globex-siem" not in html
    assert "No SIEM destination" in html
