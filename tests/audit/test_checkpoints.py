"""Signed checkpoints: checkable with the public key alone; a cut-off tail is caught even with the head rewound."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from audit import record, signing
from audit.checkpoints import (
    checkpoint_message,
    checkpoint_signature_valid,
    checkpoint_write,
    organizations_needing_checkpoint,
)
from audit.jobs.retention import write_checkpoints
from audit.models import AuditChainHead, AuditCheckpoint, AuditEvent
from audit.services import SystemActor
from audit.verify import verify_chain
from tests.audit.conftest import record_mixed_chain, tampering


def audit_cli(*args: str) -> str:
    """Run `manage.py audit ...` in-process and return what it printed."""
    out = StringIO()
    call_command("audit", *args, stdout=out)
    return out.getvalue()


def cut_tail_and_rewind_head(org, keep_through: int) -> None:
    """What an attacker with database access does: delete the newest events, then make the head row agree."""
    with tampering():
        AuditEvent.objects.filter(organization=org, sequence__gt=keep_through).delete()
        kept = AuditEvent.objects.get(organization=org, sequence=keep_through)
        AuditChainHead.objects.filter(organization=org).update(sequence=keep_through, hash=kept.hash)


def test_checkpoint_signs_the_head_and_verifies_with_the_public_key_alone(org, agents_user):
    events = record_mixed_chain(org, agents_user, count=6)

    checkpoint = checkpoint_write(organization=org)

    assert (checkpoint.sequence, checkpoint.hash) == (6, events[-1].hash)
    assert checkpoint.key_id == signing.key_id()
    message = checkpoint_message(
        organization_id=org.pk, sequence=6, hash=events[-1].hash, signed_at=checkpoint.signed_at
    )
    assert signing.verify(message, checkpoint.signature, signing.public_key_pem())
    # The row read back from the database verifies too (the time survives the round trip exactly).
    assert checkpoint_signature_valid(AuditCheckpoint.objects.get(pk=checkpoint.pk), signing.public_key_pem())


def test_checkpoint_is_announced_in_the_log_right_after_the_head_it_signed(org, agents_user):
    record_mixed_chain(org, agents_user, count=3)

    checkpoint = checkpoint_write(organization=org)

    announcement = AuditEvent.objects.get(organization=org, sequence=4)
    assert announcement.action == "audit.checkpoint"
    assert announcement.data["sequence"] == 3
    assert announcement.data["signature"] == checkpoint.signature
    result = verify_chain(organization=org)
    assert result.ok, result.reason
    assert (result.checkpoint_sequence, result.checkpoint_key_id) == (3, checkpoint.key_id)


def test_cut_tail_with_rewound_head_fails_verify_naming_the_checkpoint(org, agents_user):
    record_mixed_chain(org, agents_user, count=10)
    checkpoint = checkpoint_write(organization=org)
    record(action="prompt.submitted", actor=agents_user, organization=org)

    cut_tail_and_rewind_head(org, keep_through=7)

    result = verify_chain(organization=org)
    assert not result.ok
    signed_at = checkpoint.signed_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    assert result.reason == (
        f"checkpoint #10 signed at {signed_at} is no longer in the log: events were removed from the end"
    )
    assert result.first_bad_sequence == 8
    with pytest.raises(CommandError, match=r"FAILED at #8: checkpoint #10 signed at .* is no longer in the log"):
        audit_cli("verify", "--org", "acme")


def test_tail_cut_and_rewritten_past_the_checkpoint_is_detected(org, agents_user):
    record_mixed_chain(org, agents_user, count=5)
    checkpoint_write(organization=org)
    cut_tail_and_rewind_head(org, keep_through=3)
    for _ in range(4):  # the product carries on writing over the gap: #4 .. #7, a chain that hashes fine
        record(action="prompt.submitted", actor=agents_user, organization=org)

    result = verify_chain(organization=org)

    assert not result.ok
    assert result.first_bad_sequence == 5
    assert "does not match event #5" in result.reason


def test_forged_checkpoint_signature_is_reported(org, agents_user):
    record_mixed_chain(org, agents_user, count=4)
    checkpoint = checkpoint_write(organization=org)
    forged = bytes(reversed(bytes.fromhex(checkpoint.signature))).hex()
    with tampering():
        AuditCheckpoint.objects.filter(pk=checkpoint.pk).update(signature=forged)

    result = verify_chain(organization=org)

    assert not result.ok
    assert result.first_bad_sequence == 4
    assert result.reason.endswith("checkpoint signature invalid (forged or altered)")


def test_checkpoint_claiming_another_head_is_reported_as_invalid(org, agents_user):
    record_mixed_chain(org, agents_user, count=4)
    checkpoint = checkpoint_write(organization=org)
    with tampering():  # move the signed head back, as if the checkpoint had been taken before the last events
        AuditCheckpoint.objects.filter(pk=checkpoint.pk).update(sequence=2)

    assert "checkpoint signature invalid" in verify_chain(organization=org).reason


def test_verify_cli_still_passes_after_a_checkpoint(org, agents_user):
    record_mixed_chain(org, agents_user, count=4)
    checkpoint_write(organization=org)

    assert audit_cli("verify", "--org", "acme").startswith("OK: 5 events verified, head #5")


def test_checkpoint_cli_writes_for_one_org_and_then_only_for_chains_that_moved(org, other_org, agents_user):
    record_mixed_chain(org, agents_user, count=3)
    record(action="prompt.submitted", actor=SystemActor(), organization=other_org)

    assert audit_cli("checkpoint", "--org", "acme").startswith("acme: checkpoint #3 ")
    # acme's head only moved by its own announcement: just globex needs one.
    assert [o.slug for o in organizations_needing_checkpoint()] == ["globex"]
    printed = audit_cli("checkpoint")
    assert printed.startswith("globex: checkpoint #1 ")
    assert "nothing written" in audit_cli("checkpoint")


def test_daily_task_checkpoints_every_moved_chain(org, other_org, agents_user):
    record_mixed_chain(org, agents_user, count=2)
    record(action="prompt.submitted", actor=SystemActor(), organization=other_org)

    assert write_checkpoints.apply().get() == 2
    assert write_checkpoints.apply().get() == 0
    record(action="prompt.submitted", actor=SystemActor(), organization=org)
    assert write_checkpoints.apply().get() == 1
    assert AuditCheckpoint.objects.filter(organization=org).count() == 2


def test_checkpoint_cli_names_an_unknown_org(db):
    with pytest.raises(CommandError, match="No organization with slug 'nope'"):
        audit_cli("checkpoint", "--org", "nope")


def test_keygen_prints_a_usable_key_and_its_public_pem(settings, org, agents_user):
    printed = audit_cli("keygen")
    key = next(line.split("=", 1)[1] for line in printed.splitlines() if line.startswith("AIRLOCK_AUDIT_SIGNING_KEY="))
    assert "-----BEGIN PUBLIC KEY-----" in printed

    settings.AIRLOCK_AUDIT_SIGNING_KEY = key
    record_mixed_chain(org, agents_user, count=2)
    checkpoint = checkpoint_write(organization=org)
    public_pem = printed[printed.index("-----BEGIN PUBLIC KEY-----") :]
    assert checkpoint_signature_valid(checkpoint, public_pem)
    assert f"key id: {checkpoint.key_id}" in audit_cli("keygen", "--public")
