"""Forwarding to real loopback receivers: Splunk HEC, a signed webhook, syslog over TCP and TLS.

Receivers go down in the middle of a batch and come back: every event still arrives, in order, de-duplicable
by id, and the cursor never passes an event the receiver did not acknowledge.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import transaction
from rest_framework.test import APIClient

import audit.forwarding as forwarding
from audit import record
from audit.chain import HASHED_FIELDS, canonical_json, chain_hash
from audit.forwarding.delivery import deliver_destination
from audit.forwarding.events import event_as_json
from audit.forwarding.services import destination_create
from audit.models import AuditChainHead, AuditDestination, AuditEvent
from organizations.models import Organization
from tests.fakes.siem import HttpReceiver, SyslogReceiver, self_signed_certificate, wait_for

HEC_TOKEN = "hec-token-0f9e8d7c6b5a4321"
WEBHOOK_SECRET = "whsec-5b2f0c1e9a8d7f6e5d4c"


pytestmark = pytest.mark.usefixtures("fast_forwarding")


@pytest.fixture
def hec() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver("hec", token=HEC_TOKEN).start()
    yield receiver
    receiver.stop()


def write_events(organization: Organization, user: Any, count: int, start: int = 0) -> list[AuditEvent]:
    """Record `count` events the way the product does."""
    return [
        record(action="prompt.submitted", actor=user, organization=organization, data={"n": start + index})
        for index in range(count)
    ]


def expected_ids(organization: Organization, after: int) -> list[str]:
    """Ids of every stored event after a sequence, in order."""
    rows = AuditEvent.objects.filter(organization=organization, sequence__gt=after).order_by("sequence")
    return [str(pk) for pk in rows.values_list("id", flat=True)]


def deduplicated(events: list[dict[str, Any]]) -> list[str]:
    """Event ids in order of first arrival, duplicates dropped (what a receiver de-duplicating by id keeps)."""
    seen: dict[str, None] = {}
    for event in events:
        seen.setdefault(event["id"], None)
    return list(seen)


def make_destination(organization: Organization, owner: Any, kind: str, **fields: Any) -> AuditDestination:
    return destination_create(actor=owner, organization=organization, name=f"{kind}-dest", kind=kind, **fields)


def refreshed(destination: AuditDestination) -> AuditDestination:
    destination.refresh_from_db()
    return destination


def test_hec_receives_events_in_order_with_ids_and_the_token(org, owner, hec) -> None:
    start = AuditChainHead.objects.get_or_create(organization=org)[0].sequence
    destination = make_destination(org, owner, "splunk-hec", url=hec.url, secret=HEC_TOKEN)
    write_events(org, owner, 7)

    result = deliver_destination(destination.pk)

    assert result.ok and result.lag == 0
    request = hec.requests[0]
    assert request.path == "/services/collector/event"
    assert request.headers["authorization"] == f"Splunk {HEC_TOKEN}"
    lines = [json.loads(line) for line in request.body.split(b"\n")]
    assert {line["source"] for line in lines} == {"airlock"}
    assert {line["sourcetype"] for line in lines} == {"airlock:audit"}
    assert all(isinstance(line["time"], float) and line["host"] for line in lines)
    assert [event["id"] for event in hec.events] == expected_ids(org, start)
    assert [event["sequence"] for event in hec.events] == list(range(start + 1, start + 9))
    assert refreshed(destination).delivered_sequence == start + 8


def test_forwarded_events_carry_what_a_receiver_needs_to_reverify_the_chain(org, owner, webhook) -> None:
    destination = make_destination(org, owner, "webhook", url=webhook.url + "/hook", secret=WEBHOOK_SECRET)
    write_events(org, owner, 3)

    deliver_destination(destination.pk)

    for event in webhook.events:
        document = {
            **{key: event[key] for key in HASHED_FIELDS if key in event},
            "organization_id": event["organization"]["id"],
            **{f"actor_{key}": event["actor"][key] for key in ("type", "id", "display")},
            **{f"target_{key}": event["target"][key] for key in ("type", "id", "display")},
        }
        assert chain_hash(event["prev_hash"], document) == event["hash"]
        assert event["organization"]["slug"] == org.slug
        assert event["product"]["name"] == "Airlock"


def test_hec_answer_other_than_code_0_is_not_an_acknowledgement(org, owner, hec) -> None:
    destination = make_destination(org, owner, "splunk-hec", url=hec.url, secret=HEC_TOKEN)
    before = destination.delivered_sequence
    write_events(org, owner, 3)
    hec.mode = "bad-code"

    result = deliver_destination(destination.pk)

    destination = refreshed(destination)
    assert not result.ok
    assert destination.delivered_sequence == before
    assert "Incorrect index (code 7)" in destination.last_error
    assert destination.consecutive_failures == 1
    assert destination.next_attempt_at is not None


def test_hec_accepts_a_full_endpoint_url_as_given(org, owner, hec) -> None:
    destination = make_destination(
        org, owner, "splunk-hec", url=hec.url + "/services/collector/event", secret=HEC_TOKEN
    )
    deliver_destination(destination.pk)
    assert [r.path for r in hec.requests] == ["/services/collector/event"]


def test_webhook_signature_verifies_with_the_secret(org, owner, webhook) -> None:
    destination = make_destination(org, owner, "webhook", url=webhook.url + "/hooks/airlock", secret=WEBHOOK_SECRET)
    write_events(org, owner, 4)

    assert deliver_destination(destination.pk).ok

    request = webhook.requests[0]
    assert request.path == "/hooks/airlock"
    timestamp = request.headers["x-airlock-timestamp"]
    signed = timestamp.encode() + b"." + request.body  # the timestamp is signed: a replayed request shows its age
    expected = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), signed, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request.headers["x-airlock-signature"], expected)
    assert abs(int(timestamp) - dt.datetime.now(dt.UTC).timestamp()) < 60
    assert len(json.loads(request.body)["events"]) == 5  # the destination's own creation, then the four


def test_a_webhook_batch_sent_again_has_the_same_delivery_id(org, owner, webhook) -> None:
    destination = make_destination(org, owner, "webhook", url=webhook.url, secret=WEBHOOK_SECRET)
    write_events(org, owner, 3)
    webhook.mode = "503"
    assert not deliver_destination(destination.pk, force=True).ok
    webhook.mode = "ok"

    assert deliver_destination(destination.pk, force=True).ok
    write_events(org, owner, 1)
    assert deliver_destination(destination.pk, force=True).ok

    first, again, next_batch = (request.headers["x-airlock-delivery"] for request in webhook.requests)
    assert first == again != next_batch


def test_hec_with_indexer_acknowledgement_gets_a_channel_per_destination(org, owner) -> None:
    receiver = HttpReceiver("hec", token=HEC_TOKEN, indexer_acknowledgement=True).start()
    try:
        destination = make_destination(
            org, owner, "splunk-hec", url=receiver.url + "/services/collector", secret=HEC_TOKEN
        )
        write_events(org, owner, 2)
        assert deliver_destination(destination.pk).ok
        write_events(org, owner, 1)
        assert deliver_destination(destination.pk).ok
    finally:
        receiver.stop()

    channels = {request.headers["x-splunk-request-channel"] for request in receiver.requests}
    assert len(channels) == 1 and uuid.UUID(channels.pop())
    assert {request.path for request in receiver.requests} == {"/services/collector/event"}


def test_syslog_frames_are_rfc5424_with_octet_counting(org, owner, syslog) -> None:
    start = AuditChainHead.objects.get_or_create(organization=org)[0].sequence
    destination = make_destination(
        org,
        owner,
        "syslog",
        host="127.0.0.1",
        port=syslog.port,
        options={"hostname": "airlock-test", "sd_id": "acme-audit@55555"},
    )
    record(action="auth.login_failed", actor=owner, organization=org, outcome="denied")
    write_events(org, owner, 3)

    assert deliver_destination(destination.pk).ok

    assert syslog.framing_errors == []
    messages = syslog.parsed
    assert [m.params["seq"] for m in messages] == [str(seq) for seq in range(start + 1, start + 6)]
    assert [m.params["id"] for m in messages] == expected_ids(org, start)
    assert {m.app_name for m in messages} == {"airlock"}
    assert {m.hostname for m in messages} == {"airlock-test"}
    assert all(m.structured_data.startswith("[acme-audit@55555 ") for m in messages)
    assert messages[1].msgid == "auth.login_failed"
    assert messages[1].pri == 13 * 8 + 4  # log audit, warning (denied)
    assert messages[2].pri == 13 * 8 + 6  # log audit, informational
    assert messages[2].timestamp.endswith("Z") and "." in messages[2].timestamp
    assert messages[2].event["action"] == "prompt.submitted"


def test_a_syslog_message_past_the_receivers_limit_says_where_the_whole_event_is(org, owner, syslog) -> None:
    destination = make_destination(
        org, owner, "syslog", host="127.0.0.1", port=syslog.port, options={"max_message_bytes": 4096}
    )
    big = record(action="workspace.command", actor=owner, organization=org, data={"output_head": "x" * 6000})
    small = record(action="prompt.submitted", actor=owner, organization=org, data={"text": "hello"})

    assert deliver_destination(destination.pk).ok

    assert syslog.framing_errors == []
    by_id = {message.params["id"]: message for message in syslog.parsed}
    stand_in = by_id[str(big.pk)]
    assert len(stand_in.raw) <= 4096
    whole = json.dumps(event_as_json(big, organization_slug=org.slug), ensure_ascii=False, separators=(",", ":"))
    assert stand_in.event == {
        "id": str(big.pk),
        "organization": {"id": org.pk, "slug": org.slug},
        "sequence": big.sequence,
        "occurred_at": stand_in.event["occurred_at"],
        "action": "workspace.command",
        "outcome": "success",
        "hash": big.hash,
        "truncated": True,
        "bytes": len(whole.encode()),
        "sha256": hashlib.sha256(whole.encode()).hexdigest(),
    }
    assert by_id[str(small.pk)].event["data"] == {"text": "hello"}


def test_syslog_over_tls_trusts_the_given_ca_only(org, owner, tmp_path) -> None:
    certificate, key = self_signed_certificate()
    receiver = SyslogReceiver(certificate=certificate, key=key, tmp_path=tmp_path).start()
    try:
        trusted = make_destination(
            org, owner, "syslog", host="127.0.0.1", port=receiver.port, use_tls=True, ca_certificate=certificate
        )
        other_ca, _ = self_signed_certificate()
        untrusted = destination_create(
            actor=owner,
            organization=org,
            name="untrusted",
            kind="syslog",
            host="127.0.0.1",
            port=receiver.port,
            use_tls=True,
            ca_certificate=other_ca,
        )
        write_events(org, owner, 3)

        assert deliver_destination(trusted.pk).ok
        failed = deliver_destination(untrusted.pk)

        assert [m.params["seq"] for m in receiver.parsed] == [
            str(seq) for seq in range(trusted.delivered_sequence + 1, trusted.delivered_sequence + 6)
        ]
        assert "CERTIFICATE_VERIFY_FAILED" in failed.error.upper().replace(" ", "_")
        assert refreshed(untrusted).delivered_sequence == untrusted.delivered_sequence
    finally:
        receiver.stop()


def test_syslog_over_mutual_tls_presents_the_client_certificate_and_a_refusal_is_an_error(org, owner, tmp_path) -> None:
    server_certificate, server_key = self_signed_certificate()
    client_certificate, client_key = self_signed_certificate(hostname="airlock-forwarder")
    receiver = SyslogReceiver(
        certificate=server_certificate, key=server_key, tmp_path=tmp_path, client_ca=client_certificate
    ).start()
    common = {"host": "127.0.0.1", "port": receiver.port, "use_tls": True, "ca_certificate": server_certificate}
    try:
        identified = make_destination(
            org, owner, "syslog", client_certificate=client_certificate, client_key=client_key, **common
        )
        anonymous = destination_create(actor=owner, organization=org, name="anonymous", kind="syslog", **common)
        start = identified.delivered_sequence
        write_events(org, owner, 3)

        assert deliver_destination(identified.pk).ok
        refused = deliver_destination(anonymous.pk)  # TLS 1.3: the refusal comes after the handshake

        assert receiver.client_subjects == ["airlock-forwarder"]
        assert len(receiver.parsed) == refreshed(identified).delivered_sequence - start == 5
        assert not refused.ok and "cannot deliver to 127.0.0.1" in refused.error
        assert AuditDestination.objects.get(pk=anonymous.pk).delivered_sequence == anonymous.delivered_sequence
    finally:
        receiver.stop()
    shown = APIClient()
    shown.force_authenticate(owner)
    answer = shown.get(f"/api/v1/orgs/{org.slug}/audit/destinations/{identified.pk}/").json()
    assert answer["has_client_key"] is True and answer["client_certificate"] == client_certificate.strip() + "\n"
    key_body = client_key.split("-----")[2].strip()[:40]
    stored = str(list(AuditEvent.objects.values_list("data", flat=True))) + json.dumps(answer)
    assert key_body not in stored and "sha256:" in stored


def _receiver_for(kind: str, request: pytest.FixtureRequest) -> tuple[Any, dict[str, Any]]:
    if kind == "splunk-hec":
        receiver = request.getfixturevalue("hec")
        return receiver, {"url": receiver.url, "secret": HEC_TOKEN}
    if kind == "webhook":
        receiver = request.getfixturevalue("webhook")
        return receiver, {"url": receiver.url, "secret": WEBHOOK_SECRET}
    receiver = request.getfixturevalue("syslog")
    return receiver, {"host": "127.0.0.1", "port": receiver.port}


@pytest.mark.parametrize("kind", ["splunk-hec", "webhook", "syslog"])
def test_receiver_down_mid_batch_loses_nothing_and_keeps_order(org, owner, auditor, kind, request) -> None:
    receiver, fields = _receiver_for(kind, request)
    destination = make_destination(org, owner, kind, **fields)
    start = destination.delivered_sequence
    write_events(org, owner, 9)  # with the creation event: 10 pending
    # Given a receiver that takes the first batch, then dies after reading part of the second one
    if kind == "syslog":
        receiver.crash_after_messages = 6
    else:
        receiver.crash_after_events = 6

    first = deliver_destination(destination.pk, batch_size=4)

    # The first batch was acknowledged; the second was (partly) read but not acknowledged: the cursor stays.
    assert first.delivered == 4 and first.error
    destination = refreshed(destination)
    assert destination.delivered_sequence == start + 4
    assert destination.last_error and destination.consecutive_failures == 1

    # While it is down, more events are written; delivery fails, and owners and auditors see lag and error
    write_events(org, owner, 5, start=100)
    down = deliver_destination(destination.pk, batch_size=4, force=True)
    assert down.error and down.delivered == 0
    assert refreshed(destination).delivered_sequence == start + 4
    client = APIClient()
    client.force_authenticate(auditor)
    shown = client.get(f"/api/v1/orgs/{org.slug}/audit/destinations/{destination.pk}/").json()
    assert shown["lag"] == 11
    assert shown["last_error"] == down.error
    assert shown["consecutive_failures"] == 2

    # When it comes back, everything arrives: in order, de-duplicable by id, nothing lost
    receiver.start()
    back = deliver_destination(destination.pk, batch_size=4, force=True)

    assert back.ok and back.lag == 0
    assert deduplicated(receiver.events) == expected_ids(org, start)
    sequences = [event["sequence"] for event in receiver.events]
    assert sorted(set(sequences)) == list(range(start + 1, start + 16))
    destination = refreshed(destination)
    assert destination.delivered_sequence == start + 15
    assert destination.last_error == "" and destination.consecutive_failures == 0
    assert destination.next_attempt_at is None and destination.last_success_at is not None
    shown = client.get(f"/api/v1/orgs/{org.slug}/audit/destinations/{destination.pk}/").json()
    assert shown["lag"] == 0 and shown["last_error"] == ""


def test_cursor_never_passes_an_unacknowledged_event_and_backoff_is_respected(org, owner, hec) -> None:
    destination = make_destination(org, owner, "splunk-hec", url=hec.url, secret=HEC_TOKEN)
    start = destination.delivered_sequence
    write_events(org, owner, 6)
    hec.mode = "503"
    hec.crash_after_events = None

    failed = deliver_destination(destination.pk, batch_size=3)
    assert "HTTP 503" in failed.error and "Server is busy" in failed.error
    assert refreshed(destination).delivered_sequence == start
    assert deliver_destination(destination.pk).skipped == "not due"  # backing off

    hec.mode = "ok"
    time.sleep(0.25)  # the backoff (tiny in tests) has passed
    assert deliver_destination(destination.pk, batch_size=3).ok
    assert refreshed(destination).delivered_sequence == start + 7
    acknowledged = [event["sequence"] for event in hec.acknowledged_events]
    assert acknowledged == list(range(start + 1, start + 8))


def test_secret_never_appears_in_last_error_api_or_audit_rows(org, owner, hec) -> None:
    hec.echo_token_in_errors = True
    hec.token = "the-receiver-expects-another-token"
    destination = make_destination(org, owner, "splunk-hec", url=hec.url, secret=HEC_TOKEN)
    write_events(org, owner, 2)

    result = deliver_destination(destination.pk)

    destination = refreshed(destination)
    assert "HTTP 403" in destination.last_error and "Invalid token" in destination.last_error
    assert HEC_TOKEN not in destination.last_error and HEC_TOKEN not in result.error
    client = APIClient()
    client.force_authenticate(owner)
    body = client.get(f"/api/v1/orgs/{org.slug}/audit/destinations/").content.decode()
    assert HEC_TOKEN not in body and HEC_TOKEN[-4:] in body
    for row in AuditEvent.objects.filter(organization=org):
        assert HEC_TOKEN not in canonical_json(row.data) and HEC_TOKEN not in row.error


def test_disabled_destination_keeps_its_place_and_catches_up_when_enabled(org, owner, webhook) -> None:
    from audit.forwarding.services import destination_set_enabled

    destination = make_destination(org, owner, "webhook", url=webhook.url, secret=WEBHOOK_SECRET, enabled=False)
    start = destination.delivered_sequence
    write_events(org, owner, 3)
    assert deliver_destination(destination.pk).skipped == "disabled"
    destination_set_enabled(actor=owner, destination=destination, enabled=True)

    assert deliver_destination(destination.pk).ok
    assert deduplicated(webhook.events) == expected_ids(org, start)


@pytest.mark.django_db(transaction=True)
def test_inline_runner_forwards_after_commit_and_retries_after_an_outage(settings, webhook) -> None:
    from tests.factories import OrganizationFactory, UserFactory, make_member

    settings.AUDIT_FORWARDING_RUNNER = "inline"
    organization = OrganizationFactory(slug="inline-org")
    user = UserFactory(username="inline-owner")
    make_member(organization, user, "owner")
    destination = destination_create(
        actor=user, organization=organization, name="hook", kind="webhook", url=webhook.url, secret=WEBHOOK_SECRET
    )
    start = destination.delivered_sequence
    for index in range(5):
        with transaction.atomic():
            record(action="prompt.submitted", actor=user, organization=organization, data={"n": index})
    assert wait_for(lambda: len(deduplicated(webhook.events)) == 6)

    # The receiver goes down; events keep coming; it comes back: the retry timer delivers without any wake-up.
    webhook.stop()
    for index in range(3):
        with transaction.atomic():
            record(action="prompt.submitted", actor=user, organization=organization, data={"n": 10 + index})
    assert wait_for(lambda: bool(refreshed(destination).last_error))
    webhook.start()
    assert wait_for(lambda: len(deduplicated(webhook.events)) == 9, timeout=10)
    assert deduplicated(webhook.events) == expected_ids(organization, start)
    assert wait_for(lambda: refreshed(destination).last_error == "")
    assert forwarding.wait_until_idle(10)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_destination_locked_by_another_worker_is_skipped_not_sent_twice(webhook) -> None:
    from django.db import connections

    from tests.factories import OrganizationFactory

    organization = OrganizationFactory(slug="locked-org")
    destination = destination_create(
        actor=None, organization=organization, name="hook", kind="webhook", url=webhook.url, secret=WEBHOOK_SECRET
    )
    locked, release = threading.Event(), threading.Event()

    def other_worker() -> None:
        try:
            with transaction.atomic():
                AuditDestination.objects.select_for_update().get(pk=destination.pk)
                locked.set()
                release.wait(10)
        finally:
            connections.close_all()

    worker = threading.Thread(target=other_worker)
    worker.start()
    try:
        assert locked.wait(10)
        result = deliver_destination(destination.pk)
        assert result.skipped == "busy" and result.delivered == 0
        assert webhook.requests == []
    finally:
        release.set()
        worker.join(10)
    # Once the lock is free the event goes out exactly once, whether this call or the after-commit wake-up sends it.
    assert forwarding.wait_until_idle(10)
    deliver_destination(destination.pk)
    assert forwarding.wait_until_idle(10)
    assert [event["sequence"] for event in webhook.events] == [1]
    assert refreshed(destination).delivered_sequence == 1
