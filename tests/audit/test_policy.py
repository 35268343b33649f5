"""Secrets never reach an audit row, and each organization's content policy decides how much text is kept."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from audit import record
from audit.models import AuditEvent, AuditSettings
from audit.policy import invalidate_policy, prepare_event_data, prepare_event_text
from audit.secrets import mask_secrets_in_text
from audit.services import AgentActor
from audit.settings_services import audit_settings_update
from audit.verify import verify_chain

SESSION = "0c1f8a8e-0d7e-4a55-9d7a-6c1b1f7b2a10"
# Recognisable fakes of each kind of secret (none is a real credential).
OPENAI_KEY = "sk-proj-FAKEfakeFAKEfake0123456789abcdWXYZ"
ANTHROPIC_KEY = "sk-ant-api03-FAKEfakeFAKEfake0123456789-ab12"
GOOGLE_KEY = "AIzaSyFAKEfakeFAKEfake0123456789abcdEFG"
AWS_KEY_ID = "AKIAFAKEFAKEFAKE1234"
AWS_SECRET = "FAKEfakeFAKEfake/0123456789+abcdefghijKL"
GITHUB_TOKEN = "ghp_FAKEfakeFAKEfake0123456789abcdefgh12"
GITHUB_PAT = "github_pat_11FAKEFAKE0123456789_fakefakefakefakefake"
SLACK_TOKEN = "xoxb-000000000000-111111111111-FAKEfakeFAKEfake"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJmYWtlLXVzZXIifQ.FAKEsignatureFAKEsignature00"
BEARER = "FAKEbearerToken0123456789"
PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "QyNTUxOQAAACBFAKEFAKEFAKEFAKEFAKEFAKEFAKEFAKEFAKEFAKEFAKEFAKEFAKE\n"
    "-----END OPENSSH PRIVATE KEY-----"
)
DB_PASSWORD = "hunter2-fake-pw"


@pytest.fixture(autouse=True)
def fresh_policy_cache() -> Iterator[None]:
    """Each test starts and ends with no cached policy (rolled-back rows must not linger in the cache)."""
    invalidate_policy()
    yield
    invalidate_policy()


def _stored(event: AuditEvent) -> str:
    """Everything the database holds for the event, as text."""
    row = AuditEvent.objects.values().get(pk=event.pk)
    return json.dumps(row, default=str, ensure_ascii=False)


def test_prompt_text_keeps_no_provider_key_or_token(org, agents_user):
    prompt = (
        f"use {OPENAI_KEY} then {ANTHROPIC_KEY} and {GOOGLE_KEY}; "
        f"gh {GITHUB_TOKEN} / {GITHUB_PAT}; slack {SLACK_TOKEN}; jwt {JWT}; "
        f"curl -H 'Authorization: Bearer {BEARER}' https://ci:{DB_PASSWORD}@git.example.test/repo.git"
    )

    event = record(action="prompt.submitted", actor=agents_user, organization=org, data={"text": prompt})

    stored = _stored(event)
    for secret in (
        OPENAI_KEY,
        ANTHROPIC_KEY,
        GOOGLE_KEY,
        GITHUB_TOKEN,
        GITHUB_PAT,
        SLACK_TOKEN,
        JWT,
        BEARER,
        DB_PASSWORD,
    ):
        assert secret not in stored
    text = event.data["text"]
    assert "[REDACTED:openai_key]…WXYZ" in text
    assert "[REDACTED:anthropic_key]…ab12" in text
    for kind in ("google_api_key", "github_token", "slack_token", "jwt", "bearer_token", "password"):
        assert f"[REDACTED:{kind}]" in text
    assert text.startswith("use [REDACTED:")
    assert "https://ci:[REDACTED:password]@git.example.test/repo.git" in text


def test_command_output_keeps_no_cloud_credentials_or_private_key(org, agents_user):
    output = (
        f"[default]\naws_access_key_id = {AWS_KEY_ID}\naws_secret_access_key = {AWS_SECRET}\n"
        f"{PRIVATE_KEY}\nDATABASE_PASSWORD={DB_PASSWORD}\ndone\n"
    )

    event = record(
        action="workspace.command",
        actor=AgentActor(user=agents_user, session_id=SESSION),
        organization=org,
        data={
            "command": "cat ~/.aws/credentials ~/.ssh/id_ed25519",
            "output_head": output,
            "output_tail": output[-60:],
        },
    )

    stored = _stored(event)
    for secret in (AWS_KEY_ID, AWS_SECRET, "FAKEFAKEFAKEFAKEFAKE", "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUA", DB_PASSWORD):
        assert secret not in stored
    head = event.data["output_head"]
    assert "[REDACTED:aws_access_key_id]" in head
    assert "aws_secret_access_key = [REDACTED:aws_secret_access_key]…fgKL"[:45] in head
    assert "[REDACTED:private_key]\n" in head
    assert head.endswith("done\n")
    assert event.data["command"] == "cat ~/.aws/credentials ~/.ssh/id_ed25519"


def test_a_private_key_cut_off_by_the_output_cap_is_still_masked():
    head = "start\n" + PRIVATE_KEY[:90]
    tail = PRIVATE_KEY[-120:] + "\nend"

    assert mask_secrets_in_text(head) == "start\n[REDACTED:private_key]"
    assert mask_secrets_in_text(tail) == "[REDACTED:private_key]\nend"


def test_secret_values_under_secret_keys_and_in_nested_data_are_masked(org, owner):
    event = record(
        action="provider.created",
        actor=owner,
        organization=org,
        data={"after": {"password": "plain-words", "headers": [f"x-api-key: {OPENAI_KEY}"]}, "tokens": 12},
    )

    assert event.data == {
        "after": {"password": "[REDACTED:secret]", "headers": ["x-api-key: [REDACTED:openai_key]…WXYZ"]},
        "tokens": 12,
    }


def test_error_and_target_texts_can_be_masked_with_the_same_rules(org):
    assert prepare_event_text(organization_id=org.pk, text=f"401 for key {OPENAI_KEY}") == (
        "401 for key [REDACTED:openai_key]…WXYZ"
    )


def test_ordinary_text_is_left_alone(org, agents_user):
    text = "Run the tests with `pytest -q` and fix tokenizer.py; skip sk-1 and the AKIA docs."

    event = record(action="prompt.submitted", actor=agents_user, organization=org, data={"text": text})

    assert event.data["text"] == text


def test_organization_without_settings_keeps_full_text(org, agents_user):
    event = record(
        action="prompt.submitted", actor=agents_user, organization=org, data={"text": "Patient 4711 is fine"}
    )

    assert event.data["text"] == "Patient 4711 is fine"
    assert not AuditSettings.objects.filter(organization=org).exists()


def test_redacted_policy_masks_the_organizations_patterns(org, other_org, owner, agents_user, outsider):
    audit_settings_update(
        actor=owner,
        organization=org,
        content_policy="redacted",
        redaction_patterns=[r"PATIENT-\d{4}", "Project Falcon"],
    )

    event = record(
        action="workspace.command",
        actor=AgentActor(user=agents_user, session_id=SESSION),
        organization=org,
        data={"command": "grep PATIENT-4711 notes.txt", "output_head": f"Project Falcon: PATIENT-0001 {OPENAI_KEY}"},
    )
    elsewhere = record(action="prompt.submitted", actor=outsider, organization=other_org, data={"text": "PATIENT-4711"})

    assert event.data["command"] == "grep [REDACTED:pattern] notes.txt"
    assert event.data["output_head"] == "[REDACTED:pattern]: [REDACTED:pattern] [REDACTED:openai_key]…WXYZ"
    assert elsewhere.data["text"] == "PATIENT-4711"


def test_digest_policy_keeps_only_sha256_and_length_and_the_chain_verifies(org, owner, agents_user):
    audit_settings_update(actor=owner, organization=org, content_policy="digest")
    prompt = "Summarise the incident report for ward 7"
    output = "line one\nline two\n"

    prompt_event = record(action="prompt.submitted", actor=agents_user, organization=org, data={"text": prompt})
    command_event = record(
        action="workspace.command",
        actor=AgentActor(user=agents_user, session_id=SESSION),
        organization=org,
        data={"command": "cat report.txt", "exit_code": 0, "output_head": output, "output_tail": output},
    )
    model_event = record(
        action="model.call",
        actor=AgentActor(user=agents_user, session_id=SESSION),
        organization=org,
        data={"model": "sim", "response_text": "The ward is calm.", "input_tokens": 10},
    )

    def sha(text: str) -> dict[str, object]:
        return {"sha256": hashlib.sha256(text.encode()).hexdigest(), "length": len(text)}

    assert AuditEvent.objects.get(pk=prompt_event.pk).data["text"] == sha(prompt)
    stored_command = AuditEvent.objects.get(pk=command_event.pk).data
    assert stored_command["output_head"] == sha(output)
    assert stored_command["output_tail"] == sha(output)
    assert (stored_command["command"], stored_command["exit_code"]) == ("cat report.txt", 0)
    stored_model = AuditEvent.objects.get(pk=model_event.pk).data
    assert stored_model["response_text"] == sha("The ward is calm.")
    assert stored_model["input_tokens"] == 10
    for event in (prompt_event, command_event, model_event):
        assert "ward" not in _stored(event) or event is command_event
    assert "line one" not in _stored(command_event)
    assert verify_chain(organization=org).ok


def test_settings_change_is_audited_with_before_and_after(org, owner):
    audit_settings_update(actor=owner, organization=org, content_policy="redacted", redaction_patterns=["ACME-\\d+"])

    event = AuditEvent.objects.get(organization=org, action="audit.settings_changed")

    assert event.actor_display == "olivia"
    assert event.data["before"] == {"content_policy": "full", "redaction_patterns": []}
    assert event.data["after"]["content_policy"] == "redacted"


def test_invalid_redaction_pattern_is_refused_with_a_message(org, owner):
    with pytest.raises(ValidationError) as refused:
        audit_settings_update(
            actor=owner, organization=org, content_policy="redacted", redaction_patterns=["(unclosed"]
        )

    assert "not a valid regular expression" in refused.value.message_dict["redaction_patterns"][0]
    assert not AuditSettings.objects.filter(organization=org).exists()


def test_unknown_content_policy_is_refused(org, owner):
    with pytest.raises(ValidationError) as refused:
        audit_settings_update(actor=owner, organization=org, content_policy="everything")

    assert "content_policy" in refused.value.message_dict


def test_only_owners_change_the_content_policy(org, auditor):
    with pytest.raises(PermissionDenied):
        audit_settings_update(actor=auditor, organization=org, content_policy="full")


def test_policy_change_applies_to_the_next_event_at_once(org, owner, agents_user):
    first = record(action="prompt.submitted", actor=agents_user, organization=org, data={"text": "hello"})
    audit_settings_update(actor=owner, organization=org, content_policy="digest")
    second = record(action="prompt.submitted", actor=agents_user, organization=org, data={"text": "hello"})

    assert first.data["text"] == "hello"
    assert set(second.data["text"]) == {"sha256", "length"}


def test_masking_costs_little_per_event_so_ingest_stays_fast(org):
    data = {
        "command": "pytest -q tests/unit",
        "exit_code": 0,
        "duration_ms": 812,
        "output_head": "collected 120 items\n" + "." * 120 + "\n120 passed in 0.81s\n",
        "output_tail": "120 passed in 0.81s\n",
        "output_sha256": "ab" * 32,
    }
    prepare_event_data(organization_id=org.pk, action="workspace.command", data=data)  # policy now cached

    best = float("inf")
    for _ in range(5):  # the best of five runs, so that a busy machine does not fail the test
        started = time.perf_counter()
        for _ in range(200):
            prepare_event_data(organization_id=org.pk, action="workspace.command", data=data)
        best = min(best, (time.perf_counter() - started) / 200)

    assert best < 0.000_15  # well inside the 200 µs an event may cost at 5,000 events/s


def test_a_stored_pattern_that_no_longer_compiles_masks_text_whole_not_never(org, agents_user):
    AuditSettings.objects.create(organization=org, content_policy="redacted", redaction_patterns=["(unclosed"])
    invalidate_policy()

    event = record(
        action="prompt.submitted", actor=agents_user, organization=org, data={"text": "PATIENT-4711", "n": 2}
    )

    # Keys too (they may carry content): every string of the event is masked, numbers stay.
    assert AuditEvent.objects.get(pk=event.pk).data == {
        "[REDACTED:pattern-unavailable]": "[REDACTED:pattern-unavailable]",
        "[REDACTED:pattern-unavailable]#": 2,
    }


def test_patterns_share_one_time_limit_per_event_and_keys_are_masked_too(org, agents_user, settings):
    settings.AUDIT_REDACTION_TIMEOUT_SECONDS = 0.2
    slow = ["(a|aa)+$"] * 5  # each would take about as long as the whole limit on the text below
    AuditSettings.objects.create(organization=org, content_policy="redacted", redaction_patterns=[*slow, "SSN-\\d+"])
    invalidate_policy()
    data = {f"arg{number}": "a" * 40 + "!" for number in range(20)} | {"SSN-123": "x"}
    began = time.monotonic()

    event = record(action="tool.call", actor=agents_user, organization=org, data=data)

    assert time.monotonic() - began < 3  # one limit for the event, not one per pattern and string
    stored = AuditEvent.objects.get(pk=event.pk).data
    assert "SSN-123" not in json.dumps(stored)
    assert set(stored.values()) == {"[REDACTED:pattern-unavailable]"}
