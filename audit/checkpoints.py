"""Signed checkpoints: an Ed25519 signature over an organization's chain head, so that a truncated tail is detected.

A checkpoint signs `canonical_json({"organization_id", "sequence", "hash", "signed_at"})` of the head as it stands.
Order inside the one transaction: lock the head, sign it, store the checkpoint, then record the `audit.checkpoint`
event that announces it (sequence, hash, key id and signature). The announcement therefore sits right after the
signed head (at `sequence + 1`) and is covered by the next checkpoint, not by its own: signing after recording would
need the event to contain its own signature. Because the announcement goes to the SIEM like every event, a copy of
each signature lives outside the database too.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

from django.db import transaction
from django.db.models import OuterRef, Subquery

from audit import signing
from audit.chain import canonical_json, format_time
from audit.chaining import chain_committed
from audit.models import AuditChainHead, AuditCheckpoint
from audit.services import Actor, SystemActor, record
from organizations.models import Organization

CHECKPOINT_ACTION = "audit.checkpoint"


def checkpoint_message(*, organization_id: int, sequence: int, hash: str, signed_at: dt.datetime) -> bytes:
    """The exact bytes a checkpoint's signature covers."""
    document = {
        "organization_id": organization_id,
        "sequence": sequence,
        "hash": hash,
        "signed_at": format_time(signed_at),
    }
    return canonical_json(document).encode("utf-8")


def checkpoint_signature_valid(checkpoint: AuditCheckpoint, public_pem: str | None = None) -> bool:
    """Whether the checkpoint's signature is valid for the configured key (or the given public key PEM)."""
    message = checkpoint_message(
        organization_id=checkpoint.organization_id,
        sequence=checkpoint.sequence,
        hash=checkpoint.hash,
        signed_at=checkpoint.signed_at,
    )
    return signing.verify(message, checkpoint.signature, public_pem)


def latest_checkpoint(organization: Organization) -> AuditCheckpoint | None:
    """The organization's checkpoint with the highest sequence (the newest when several sign the same head)."""
    return AuditCheckpoint.objects.filter(organization_id=organization.pk).order_by("-sequence", "-signed_at").first()


@transaction.atomic
def checkpoint_write(*, organization: Organization, actor: Actor = None) -> AuditCheckpoint:
    """Sign the organization's current chain head, store the checkpoint and record `audit.checkpoint`."""
    # Read the key first: a missing key fails before anything is locked or written.
    key_id = signing.key_id()
    chain_committed(organization.pk)  # sign a head that covers every committed event (batched chaining)
    head, _ = AuditChainHead.objects.select_for_update().get_or_create(organization_id=organization.pk)
    signed_at = dt.datetime.now(dt.UTC)
    message = checkpoint_message(
        organization_id=organization.pk, sequence=head.sequence, hash=head.hash, signed_at=signed_at
    )
    checkpoint = AuditCheckpoint.objects.create(
        organization_id=organization.pk,
        sequence=head.sequence,
        hash=head.hash,
        signed_at=signed_at,
        key_id=key_id,
        signature=signing.sign(message),
    )
    record(
        action=CHECKPOINT_ACTION,
        actor=actor if actor is not None else SystemActor("audit-checkpoint"),
        organization=organization,
        target=checkpoint,
        data={
            "checkpoint_id": checkpoint.pk,
            "sequence": checkpoint.sequence,
            "hash": checkpoint.hash,
            "signed_at": format_time(signed_at),
            "key_id": key_id,
            "signature": checkpoint.signature,
        },
        immediate=True,  # the announcement is the event right after the head it signs
    )
    return checkpoint


def organizations_needing_checkpoint() -> Iterator[Organization]:
    """Organizations whose chain moved since their last checkpoint, or whose last one used another key.

    A checkpoint's own announcement is the event right after it, so a head at `checkpoint + 1` has not moved.
    One query for all organizations.
    """
    latest = AuditCheckpoint.objects.filter(organization_id=OuterRef("organization_id")).order_by(
        "-sequence", "-signed_at"
    )
    heads = (
        AuditChainHead.objects.filter(sequence__gt=0)
        .annotate(
            checkpoint_sequence=Subquery(latest.values("sequence")[:1]),
            checkpoint_key=Subquery(latest.values("key_id")[:1]),
        )
        .select_related("organization")
        .order_by("organization_id")
    )
    key_id = signing.key_id()
    for head in heads.iterator():
        if (
            head.checkpoint_sequence is None
            or head.sequence > head.checkpoint_sequence + 1
            or head.checkpoint_key != key_id
        ):
            yield head.organization


__all__ = [
    "CHECKPOINT_ACTION",
    "checkpoint_message",
    "checkpoint_signature_valid",
    "checkpoint_write",
    "latest_checkpoint",
    "organizations_needing_checkpoint",
]
