"""SIEM destinations: who may manage and see them, validation, write-only secrets, the CLI, cheap scheduling."""

from __future__ import annotations

from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command

import audit.forwarding as forwarding
from audit import record
from audit.forwarding.delivery import backoff_seconds
from audit.forwarding.services import destination_create, destination_set_enabled
from audit.models import AuditChainHead, AuditDestination, AuditEvent
from tests.api import api
from tests.fakes.siem import HttpReceiver, SyslogReceiver, self_signed_certificate

HEC_TOKEN = "hec-token-aa11bb22cc33dd44"
WEBHOOK_SECRET = "whsec-0123456789abcdef-xyz9"


@pytest.fixture(autouse=True)
def fresh_cache(settings: Any) -> Iterator[None]:
    settings.AUDIT_FORWARDING_TIMEOUT_SECONDS = 3
    forwarding.forget_destinations()
    yield
    forwarding.forget_destinations()


def url(org: Any, suffix: str = "") -> str:
    return f"/api/v1/orgs/{org.slug}/audit/destinations/{suffix}"


def hec_payload(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "splunk",
        "kind": "splunk-hec",
        "url": "https://splunk.internal:8088",
        "secret": HEC_TOKEN,
        **overrides,
    }


def test_owner_adds_a_destination_and_the_secret_is_write_only(org, owner) -> None:
    response = api(owner).post(url(org), hec_payload(), format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["has_secret"] is True and body["secret_hint"] == HEC_TOKEN[-4:]
    assert "secret" not in body and HEC_TOKEN not in response.content.decode()
    stored = AuditDestination.objects.get(pk=body["id"])
    assert HEC_TOKEN not in stored.secret_encrypted
    created = AuditEvent.objects.get(organization=org, action="audit.destination_created")
    assert created.data["secret_hint"] == "****" + HEC_TOKEN[-4:]
    assert created.actor_id == str(owner.pk)


def test_new_destination_starts_at_the_head_unless_asked_to_replay(org, owner) -> None:
    for index in range(5):
        record(action="prompt.submitted", actor=owner, organization=org, data={"n": index})
    head = AuditChainHead.objects.get(organization=org).sequence

    from_now = destination_create(actor=owner, organization=org, name="now", kind="syslog", host="siem", port=514)
    history = destination_create(
        actor=owner, organization=org, name="all", kind="syslog", host="siem", port=514, options={"replay_from": 0}
    )
    from_three = destination_create(
        actor=owner, organization=org, name="three", kind="syslog", host="siem", port=514, options={"replay_from": 3}
    )

    assert from_now.delivered_sequence == head
    assert history.delivered_sequence == 0
    assert from_three.delivered_sequence == 2
    assert history.options == {}  # replay_from is an instruction, not a stored option


def test_auditor_sees_destinations_with_lag_but_cannot_change_them(org, owner, auditor) -> None:
    destination = destination_create(actor=owner, organization=org, name="siem", kind="syslog", host="siem", port=514)
    record(action="prompt.submitted", actor=owner, organization=org)

    listed = api(auditor).get(url(org))
    assert listed.status_code == 200
    [row] = listed.json()["results"]
    assert row["lag"] == 2 and row["head_sequence"] == destination.delivered_sequence + 2
    assert api(auditor).post(url(org), hec_payload(), format="json").status_code == 403
    assert api(auditor).patch(url(org, f"{destination.pk}/"), {"enabled": False}, format="json").status_code == 403
    assert api(auditor).delete(url(org, f"{destination.pk}/")).status_code == 403
    assert api(auditor).post(url(org, f"{destination.pk}/test/")).status_code == 403


def test_member_without_audit_role_gets_403_and_outsider_gets_404(org, plain_member, outsider) -> None:
    assert api(plain_member).get(url(org)).status_code == 403
    assert api(outsider).get(url(org)).status_code == 404
    assert api().get(url(org)).status_code in (401, 403)


def test_foreign_destination_id_answers_404(org, other_org, owner, outsider) -> None:
    foreign = destination_create(actor=outsider, organization=other_org, name="x", kind="syslog", host="h", port=514)
    client = api(owner)

    assert client.get(url(org, f"{foreign.pk}/")).status_code == 404
    assert client.patch(url(org, f"{foreign.pk}/"), {"enabled": False}, format="json").status_code == 404
    assert client.delete(url(org, f"{foreign.pk}/")).status_code == 404
    assert client.post(url(org, f"{foreign.pk}/test/")).status_code == 404
    assert AuditDestination.objects.filter(pk=foreign.pk, enabled=True).exists()


@pytest.mark.parametrize(
    ("payload", "field", "words"),
    [
        (hec_payload(secret=""), "secret", "HEC token"),
        (hec_payload(url="ftp://splunk"), "url", "https://"),
        (hec_payload(url="https://user:pw@splunk"), "url", "user name"),
        (hec_payload(url="http://splunk.internal:8088"), "url", "https://"),
        (hec_payload(url="https://splunk.internal:0"), "url", "port"),
        ({"name": "s", "kind": "syslog", "host": "256.1.1.1", "port": 514}, "host", "not a host name"),
        (hec_payload(options={"index": "main\u0007"}), "options", "printable ASCII"),
        (
            {"name": "s", "kind": "syslog", "host": "siem", "port": 514, "options": {"sd_id": "acme audit"}},
            "options",
            "sd_id",
        ),
        (hec_payload(url="https://splunk.internal/hec?token=abc"), "url", "?query"),
        (
            {"name": "s", "kind": "syslog", "host": "siem", "port": 514, "options": {"max_message_bytes": 100}},
            "options",
            "max_message_bytes",
        ),
        ({"name": "s", "kind": "syslog", "host": "siem"}, "port", "port"),
        ({"name": "s", "kind": "syslog", "port": 514}, "host", "host"),
        (
            {"name": "s", "kind": "syslog", "host": "siem", "port": 6514, "use_tls": True, "ca_certificate": "nope"},
            "ca_certificate",
            "PEM",
        ),
        ({"name": "w", "kind": "webhook", "url": "https://siem/h", "secret": "short"}, "secret", "16"),
        ({"name": "w", "kind": "nope"}, "kind", "nope"),
        (hec_payload(options={"replay_from": -1}), "options", "replay_from"),
        (hec_payload(options={"colour": "red"}), "options", "colour"),
    ],
)
def test_bad_destination_answers_400_naming_what_to_fix(org, owner, payload, field, words) -> None:
    response = api(owner).post(url(org), payload, format="json")

    assert response.status_code == 400, response.content
    assert words in str(response.json()[field])
    assert not AuditDestination.objects.exists()


def test_duplicate_name_answers_400(org, owner) -> None:
    assert api(owner).post(url(org), hec_payload(), format="json").status_code == 201
    response = api(owner).post(url(org), hec_payload(), format="json")
    assert response.status_code == 400 and "already has a destination" in str(response.json()["name"])


def test_syslog_over_tls_accepts_a_pem_ca_bundle(org, owner) -> None:
    certificate, _ = self_signed_certificate()
    payload = {"name": "s", "kind": "syslog", "host": "siem.internal", "port": 6514, "use_tls": True}
    response = api(owner).post(url(org), {**payload, "ca_certificate": certificate}, format="json")
    assert response.status_code == 201, response.content


def test_update_rotates_the_secret_and_audits_it_masked(org, owner) -> None:
    created = api(owner).post(url(org), hec_payload(), format="json").json()
    new_token = "rotated-token-99887766zz"

    response = api(owner).patch(url(org, f"{created['id']}/"), {"secret": new_token, "name": "splunk-2"}, format="json")

    assert response.status_code == 200, response.content
    assert response.json()["secret_hint"] == "66zz" and response.json()["name"] == "splunk-2"
    event = AuditEvent.objects.filter(organization=org, action="audit.destination_updated").get()
    assert event.data["changes"]["secret_hint"]["after"] == "****66zz"
    assert event.data["changes"]["name"] == {"before": "splunk", "after": "splunk-2"}
    assert new_token not in str(event.data)
    assert api(owner).patch(url(org, f"{created['id']}/"), {"kind": "webhook"}, format="json").status_code == 400


def test_owner_deletes_a_destination_and_it_is_audited(org, owner) -> None:
    created = api(owner).post(url(org), hec_payload(), format="json").json()
    assert api(owner).delete(url(org, f"{created['id']}/")).status_code == 204
    assert not AuditDestination.objects.exists()
    assert AuditEvent.objects.filter(organization=org, action="audit.destination_deleted").count() == 1


def test_test_message_reaches_the_receiver_without_moving_the_cursor(org, owner) -> None:
    receiver = HttpReceiver("webhook").start()
    try:
        created = (
            api(owner)
            .post(
                url(org), {"name": "w", "kind": "webhook", "url": receiver.url, "secret": WEBHOOK_SECRET}, format="json"
            )
            .json()
        )
        response = api(owner).post(url(org, f"{created['id']}/test/"))
        assert response.json() == {"ok": True, "error": ""}
        [event] = receiver.events
        assert event["action"] == "audit.destination_test" and event["sequence"] == 0
        assert AuditDestination.objects.get(pk=created["id"]).delivered_sequence == created["delivered_sequence"]
        receiver.stop()
        failed = api(owner).post(url(org, f"{created['id']}/test/")).json()
        # Refused or reset, depending on how far the receiver's shutdown got: either way it says where it failed.
        assert failed["ok"] is False and f"cannot deliver to 127.0.0.1:{receiver.port}" in failed["error"]
        outcomes = AuditEvent.objects.filter(action="audit.destination_tested").values_list("outcome", flat=True)
        assert sorted(outcomes) == ["failure", "success"]
    finally:
        receiver.stop()


def test_destination_list_takes_a_fixed_number_of_queries(org, owner, django_assert_max_num_queries) -> None:
    for index in range(6):
        destination_create(actor=owner, organization=org, name=f"d{index}", kind="syslog", host="siem", port=514)
    with django_assert_max_num_queries(6):
        response = api(owner).get(url(org))
    assert response.json()["count"] == 6 and len(response.json()["results"]) == 6


def test_scheduling_costs_no_query_for_an_organization_without_destinations(org, django_assert_num_queries) -> None:
    forwarding.schedule_forwarding(org.pk)  # the first call looks, then the answer is cached
    with django_assert_num_queries(0):
        for _ in range(1000):
            forwarding.schedule_forwarding(org.pk)


def test_celery_runner_runs_one_delivery_per_burst(org, owner, settings) -> None:
    from audit.jobs.forwarding import forward_destination

    settings.AUDIT_FORWARDING_RUNNER = "celery"
    settings.AUDIT_FORWARDING_DEBOUNCE_SECONDS = 60
    receiver = HttpReceiver("webhook").start()
    conf = forward_destination.app.conf
    eager = conf.task_always_eager
    conf.task_always_eager = True  # run the queued task in this process, on this test's database
    forwarding._celery_pending_until.clear()
    try:
        destination = destination_create(
            actor=owner, organization=org, name="w", kind="webhook", url=receiver.url, secret=WEBHOOK_SECRET
        )
        for index in range(50):
            record(action="prompt.submitted", actor=owner, organization=org, data={"n": index})
            forwarding.schedule_forwarding(org.pk)  # what each commit does

        assert len(receiver.requests) == 1  # debounced: one task for the burst, not one per event
        assert receiver.events[0]["sequence"] == destination.delivered_sequence + 1
    finally:
        conf.task_always_eager = eager
        forwarding._celery_pending_until.clear()
        receiver.stop()


def run_cli(*args: str) -> str:
    out = StringIO()
    call_command("audit", "destinations", *args, stdout=out)
    return out.getvalue()


def test_cli_adds_lists_and_delivers(org, owner, monkeypatch) -> None:
    receiver = SyslogReceiver().start()
    try:
        record(action="prompt.submitted", actor=owner, organization=org)
        out = run_cli(
            "add",
            "--org",
            org.slug,
            "--name",
            "siem",
            "--kind",
            "syslog",
            "--host",
            "127.0.0.1",
            "--port",
            str(receiver.port),
            "--from-start",
        )
        assert "Added siem (syslog, tcp://127.0.0.1:" in out and "whole history" in out

        listing = run_cli("--org", org.slug)
        assert "siem\tsyslog" in listing and "lag 2" in listing and "last error: -" in listing

        delivered = run_cli("deliver", "--org", org.slug)
        assert "siem: sent 2 event(s)" in delivered and "lag 0" in delivered
        assert [m.msgid for m in receiver.parsed] == ["prompt.submitted", "audit.destination_created"]

        receiver.stop()
        record(action="prompt.submitted", actor=owner, organization=org)
        with pytest.raises(CommandError, match="Delivery failed for siem"):
            run_cli("deliver", "--org", org.slug)
        assert f"last error: cannot deliver to 127.0.0.1:{receiver.port}" in run_cli("list", "--org", org.slug)
    finally:
        receiver.stop()


def test_cli_reads_secrets_from_the_environment_only(org, monkeypatch) -> None:
    monkeypatch.setenv("HEC_TOKEN", HEC_TOKEN)
    run_cli(
        "add",
        "--org",
        org.slug,
        "--name",
        "splunk",
        "--kind",
        "splunk-hec",
        "--url",
        "https://s:8088",
        "--secret-env",
        "HEC_TOKEN",
    )
    assert AuditDestination.objects.get(name="splunk").secret_hint == HEC_TOKEN[-4:]
    with pytest.raises(CommandError, match="NOPE is not set"):
        run_cli(
            "add",
            "--org",
            org.slug,
            "--name",
            "x",
            "--kind",
            "splunk-hec",
            "--url",
            "https://s",
            "--secret-env",
            "NOPE",
        )
    with pytest.raises(CommandError, match="HEC token"):
        run_cli("add", "--org", org.slug, "--name", "y", "--kind", "splunk-hec", "--url", "https://s")
    with pytest.raises(CommandError, match="no organization|No organization"):
        run_cli("--org", "missing")


def test_a_plain_http_url_is_accepted_for_this_machine_only(org, owner) -> None:
    for index, local in enumerate(("http://127.0.0.1:8088", "http://localhost:8088", "http://[::1]:8088")):
        response = api(owner).post(url(org), hec_payload(name=f"local-{index}", url=local), format="json")
        assert response.status_code == 201, response.content


def test_backoff_stays_capped_and_jittered_after_days_of_failures(settings) -> None:
    settings.AUDIT_FORWARDING_BACKOFF_BASE_SECONDS = 2.0
    settings.AUDIT_FORWARDING_BACKOFF_MAX_SECONDS = 300.0

    delays = [backoff_seconds(failures) for failures in (1, 2, 1025, 100_000)]

    assert 1.0 <= delays[0] <= 2.0 and 2.0 <= delays[1] <= 4.0
    assert all(150.0 <= delay <= 300.0 for delay in delays[2:])


def test_a_secret_no_key_opens_fails_the_test_saying_so_and_does_not_stop_a_pause(org, owner) -> None:
    created = api(owner).post(url(org), hec_payload(), format="json").json()
    AuditDestination.objects.filter(pk=created["id"]).update(secret_encrypted="gAAAAA-not-a-token-of-any-key")

    tested = api(owner).post(url(org, f"{created['id']}/test/"))
    paused = api(owner).patch(url(org, f"{created['id']}/"), {"enabled": False}, format="json")

    assert tested.status_code == 200 and tested.json()["ok"] is False
    assert "cannot be decrypted" in tested.json()["error"]
    assert AuditEvent.objects.filter(action="audit.destination_tested", outcome="failure").exists()
    assert paused.status_code == 200 and paused.json()["enabled"] is False


def test_a_client_certificate_comes_with_its_own_key_and_only_over_tls(org, owner) -> None:
    certificate, key = self_signed_certificate(hostname="airlock")
    _, other_key = self_signed_certificate(hostname="other")
    syslog = {"name": "s", "kind": "syslog", "host": "siem", "port": 6514, "use_tls": True}
    cases = [
        ({**syslog, "client_certificate": certificate}, "client_key", "private key"),
        ({**syslog, "client_key": key}, "client_certificate", "client certificate"),
        ({**syslog, "client_certificate": certificate, "client_key": other_key}, "client_key", "does not belong"),
        ({**syslog, "client_certificate": certificate, "client_key": "nope"}, "client_key", "PEM private key"),
        ({**syslog, "client_certificate": key, "client_key": key}, "client_certificate", "private key"),
        (
            {**syslog, "use_tls": False, "client_certificate": certificate, "client_key": key},
            "client_certificate",
            "TLS",
        ),
    ]
    for payload, field, words in cases:
        response = api(owner).post(url(org), payload, format="json")
        assert response.status_code == 400, (field, response.content)
        assert words in str(response.json()[field])
    assert not AuditDestination.objects.exists()

    created = api(owner).post(url(org), {**syslog, "client_certificate": certificate, "client_key": key}, format="json")
    removed = api(owner).patch(url(org, f"{created.json()['id']}/"), {"client_certificate": ""}, format="json")

    assert created.status_code == 201 and created.json()["has_client_key"] is True
    assert removed.status_code == 200 and removed.json()["has_client_key"] is False
    assert removed.json()["client_certificate"] == ""


def test_a_key_tls_would_refuse_is_refused_when_given(org, owner) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # below OpenSSL's default security level
    certificate, key = self_signed_certificate(hostname="weak", key=weak)
    payload = {"name": "s", "kind": "syslog", "host": "siem", "port": 6514, "use_tls": True}

    response = api(owner).post(
        url(org), {**payload, "client_certificate": certificate, "client_key": key}, format="json"
    )

    assert response.status_code == 400
    assert "TLS will not use this certificate and key" in str(response.json()["client_certificate"])


def test_a_destination_saved_under_older_url_rules_can_still_be_paused(org, owner) -> None:
    legacy = AuditDestination.objects.create(
        organization=org, name="old", kind="webhook", url="http://siem.internal/hook?k=1", secret_encrypted="x"
    )

    paused = api(owner).patch(url(org, f"{legacy.pk}/"), {"enabled": False}, format="json")
    moved = api(owner).patch(url(org, f"{legacy.pk}/"), {"url": "http://siem.internal/other"}, format="json")

    rotated = api(owner).patch(url(org, f"{legacy.pk}/"), {"secret": "whsec-0123456789abcdef-new"}, format="json")
    resumed = api(owner).patch(url(org, f"{legacy.pk}/"), {"enabled": True}, format="json")

    assert paused.status_code == 200 and paused.json()["enabled"] is False
    for refused in (moved, rotated, resumed):  # nothing more goes to it in clear
        assert refused.status_code == 400 and "https://" in str(refused.json()["url"])
    with pytest.raises(ValidationError, match="https://"):
        destination_set_enabled(actor=owner, destination=legacy, enabled=True)
