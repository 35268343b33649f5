"""Retention and legal hold: the one privileged, audited path that removes audit events.

`audit_purge` deletes an organization's events older than its retention, but never:
- anything while a legal hold is on (the skipped purge is recorded);
- an event a SIEM destination, paused or not, has not acknowledged yet (past the lowest `delivered_sequence`);
- the event of the newest signed checkpoint (older checkpointed events may go: the chain anchor then vouches
  for where the remaining chain starts, and the newest checkpoint still proves the tail);
- the chain's last event.

In one transaction it locks the chain head, moves the head's anchor (`anchor_sequence`/`anchor_hash`) to the last
purged event, deletes the events up to it and records `audit.purged` (range, count, old and new anchor).
Verification then starts from the anchor. On PostgreSQL the anchor move and the DELETE are the database function
`airlock_audit_purge` (migration 0008): it runs with its owner's rights, checks the rules above again (age by the
database's clock) and writes an append-only `AuditPurge` row, so the role the services connect as needs no DELETE
on events (`python manage.py audit grants --role ROLE`) and every purge leaves a trace it cannot remove. The
append-only trigger lets a DELETE through only while that function has its purge flag set and only for events at
or before the anchor (migration 0004).
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import DatabaseError, connection, transaction

from audit.models import (
    AuditChainHead,
    AuditCheckpoint,
    AuditDestination,
    AuditEvent,
    AuditPurge,
    AuditSettings,
)
from audit.selectors import retention_floor_days
from audit.services import Actor, AgentActor, SystemActor, record
from organizations.models import Organization
from organizations.permissions import require_permission

MAX_RETENTION_DAYS = 36_500
PURGE_FUNCTION = "airlock_audit_purge"  # migration 0008


class _Keep(enum.Enum):
    KEEP = "keep"


# Pass KEEP (the default) for a setting `audit_retention_update` should leave as it is.
KEEP = _Keep.KEEP


def _require_owner(actor: Actor, organization: Organization) -> None:
    """Operators (SystemActor: shell access) pass; users must be owners; agents never change retention."""
    if isinstance(actor, SystemActor):
        return
    if actor is None or isinstance(actor, AgentActor) or not isinstance(actor, AbstractBaseUser):
        raise PermissionDenied("Only an owner or the operator may change audit retention or purge the audit log.")
    require_permission(actor, organization, "org.manage")


def validate_days(days: object, *, field: str, forever: str = "") -> None:
    """A number of days a retention may be (1 to MAX_RETENTION_DAYS), or a ValidationError naming the field."""
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_RETENTION_DAYS:
        hint = f"; {forever}" if forever else ""
        raise ValidationError(
            {field: f"must be a whole number of days from 1 to {MAX_RETENTION_DAYS}, got {days!r}{hint}"}
        )


def _retention_state(settings_row: AuditSettings) -> dict[str, object]:
    return {
        "retention_days": settings_row.retention_days,
        "legal_hold": settings_row.legal_hold,
        "legal_hold_reason": settings_row.legal_hold_reason,
    }


@transaction.atomic
def audit_retention_update(
    *,
    actor: Actor,
    organization: Organization,
    retention_days: int | None | _Keep = KEEP,
    legal_hold: bool | _Keep = KEEP,
    legal_hold_reason: str | _Keep = KEEP,
) -> AuditSettings:
    """Change retention days (None: keep forever) and the legal hold (on needs a reason); audited with before/after."""
    _require_owner(actor, organization)
    settings_row, _ = AuditSettings.objects.select_for_update().get_or_create(organization_id=organization.pk)
    before = _retention_state(settings_row)
    if retention_days is not KEEP:
        if retention_days is not None:
            validate_days(retention_days, field="retention_days", forever="to keep events forever, clear it instead")
        # Only a new retention is held to the minimum: a hold may change under an older, shorter one.
        floor = retention_floor_days() if retention_days not in (None, settings_row.retention_days) else None
        if floor is not None and retention_days < floor:
            raise ValidationError(
                {
                    "retention_days": f"this deployment keeps audit events at least {floor} days (the operator's "
                    f"minimum): use {floor} or more, or keep events forever"
                }
            )
        settings_row.retention_days = retention_days
    reason = None if legal_hold_reason is KEEP else " ".join(str(legal_hold_reason).split())
    release_reason = ""
    if legal_hold is not KEEP:
        if legal_hold:
            if not (reason or (settings_row.legal_hold and settings_row.legal_hold_reason)):
                raise ValidationError({"legal_hold_reason": "a legal hold needs a reason (for example a case number)"})
            settings_row.legal_hold = True
            if reason:
                settings_row.legal_hold_reason = reason
        else:
            release_reason = reason or ""
            settings_row.legal_hold = False
            settings_row.legal_hold_reason = ""
    elif reason is not None:
        if not settings_row.legal_hold:
            raise ValidationError({"legal_hold_reason": "a reason goes with turning the legal hold on"})
        if not reason:
            raise ValidationError({"legal_hold_reason": "a legal hold needs a reason; it cannot be emptied"})
        settings_row.legal_hold_reason = reason
    after = _retention_state(settings_row)
    if after == before:
        return settings_row
    settings_row.save(update_fields=["retention_days", "legal_hold", "legal_hold_reason", "updated_at"])
    data: dict[str, object] = {"before": before, "after": after}
    if release_reason:
        data["release_reason"] = release_reason
    record(action="audit.retention_updated", actor=actor, organization=organization, target=organization, data=data)
    return settings_row


@dataclass(frozen=True)
class PurgeResult:
    """What a purge did (or, in a dry run, would do), with the reasons anything expired was kept."""

    organization_slug: str
    dry_run: bool
    purged: int = 0
    from_sequence: int | None = None
    to_sequence: int | None = None
    anchor_sequence: int = 0
    anchor_hash: str = ""
    cutoff: dt.datetime | None = None
    expired_through: int | None = None
    skipped: str = ""
    kept: list[str] = field(default_factory=list)
    event_sequence: int | None = None

    def summary(self) -> str:
        """One paragraph for the CLI and the logs."""
        verb = "would purge" if self.dry_run else "purged"
        if self.skipped:
            text = f"{self.organization_slug}: nothing purged: {self.skipped}"
        elif self.purged:
            text = (
                f"{self.organization_slug}: {verb} {self.purged} events "
                f"(#{self.from_sequence} to #{self.to_sequence}); "
                f"the chain now starts after anchor #{self.anchor_sequence} {self.anchor_hash[:12]}"
            )
        else:
            text = f"{self.organization_slug}: nothing to purge"
        if self.kept:
            text += "; kept: " + "; ".join(self.kept)
        return text


def _seq_range(low: int, high: int) -> str:
    return f"#{low}" if low == high else f"#{low} to #{high}"


@transaction.atomic
def audit_purge(
    *, organization: Organization, actor: Actor, now: dt.datetime | None = None, dry_run: bool = False
) -> PurgeResult:
    """Delete events older than the organization's retention through the one privileged path; records `audit.purged`."""
    _require_owner(actor, organization)
    postgres = connection.vendor == "postgresql"
    now = now or (_database_now() if postgres else dt.datetime.now(dt.UTC))
    slug = organization.slug
    settings_row = AuditSettings.objects.filter(organization_id=organization.pk).first()
    if dry_run:
        head = AuditChainHead.objects.filter(organization_id=organization.pk).first()
    else:
        head = AuditChainHead.objects.select_for_update().filter(organization_id=organization.pk).first()
    anchor_sequence = head.anchor_sequence if head else 0
    anchor_hash = head.anchor_hash if head else ""
    base = {
        "organization_slug": slug,
        "dry_run": dry_run,
        "anchor_sequence": anchor_sequence,
        "anchor_hash": anchor_hash,
    }

    if settings_row is None or settings_row.retention_days is None:
        return PurgeResult(**base, skipped="no retention is set (events are kept forever)")

    def skip(skipped: str, data: dict[str, object]) -> PurgeResult:
        """A purge that does not run, recorded as `audit.purge_skipped` (not in a dry run)."""
        if dry_run:
            return PurgeResult(**base, skipped=skipped)
        event = record(
            action="audit.purge_skipped",
            actor=actor,
            organization=organization,
            data=data,
            immediate=True,  # the result names its sequence
        )
        return PurgeResult(**base, skipped=skipped, event_sequence=event.sequence)

    if settings_row.legal_hold:
        return skip(
            f"legal hold is on ({settings_row.legal_hold_reason})",
            {"reason": "legal hold", "legal_hold_reason": settings_row.legal_hold_reason},
        )
    if settings_row.retention_days > MAX_RETENTION_DAYS:  # only a direct write of the row gets here
        return PurgeResult(**base, skipped=f"the retention of {settings_row.retention_days} days is out of range")
    floor = retention_floor_days()
    if floor is not None and settings_row.retention_days < floor:
        # Set before the operator's minimum; the purge function refuses it too.
        return skip(
            f"the retention of {settings_row.retention_days} days is under the operator's minimum of {floor} days",
            {
                "reason": "under the operator's minimum retention",
                "retention_days": settings_row.retention_days,
                "minimum_days": floor,
            },
        )
    cutoff = now - dt.timedelta(days=settings_row.retention_days)
    base["cutoff"] = cutoff
    if head is None or head.sequence <= anchor_sequence:
        return PurgeResult(**base)

    events = AuditEvent.objects.filter(organization_id=organization.pk, sequence__gt=anchor_sequence)
    # Everything before the first event that is still within retention has expired (clocks never make us delete
    # a young event that happens to sit behind an older one).
    first_young = (
        events.filter(sequence__lte=head.sequence, occurred_at__gte=cutoff)
        .order_by("sequence")
        .values_list("sequence", flat=True)
        .first()
    )
    expired_through = head.sequence if first_young is None else first_young - 1
    base["expired_through"] = expired_through if expired_through > anchor_sequence else None
    if expired_through <= anchor_sequence:
        return PurgeResult(**base)

    upper, kept = expired_through, []
    # A paused destination counts too: it keeps its place and catches up when resumed (delete it to let go).
    destination = (
        AuditDestination.objects.filter(organization_id=organization.pk)
        .order_by("delivered_sequence", "name")
        .values_list("name", "delivered_sequence", "enabled")
        .first()
    )
    if destination is not None and destination[1] < upper:
        name, delivered, enabled = destination
        which = "SIEM destination" if enabled else "paused SIEM destination"
        kept.append(f"{_seq_range(delivered + 1, upper)} not yet delivered to {which} {name!r}")
        upper = delivered
    checkpoint = (
        AuditCheckpoint.objects.filter(organization_id=organization.pk)
        .order_by("-sequence", "-signed_at")
        .values_list("sequence", flat=True)
        .first()
    )
    if checkpoint is not None and checkpoint <= upper:
        kept.append(f"{_seq_range(checkpoint, upper)}: from the event of the newest signed checkpoint #{checkpoint} on")
        upper = checkpoint - 1
    if upper >= head.sequence:
        kept.append(f"#{head.sequence}: the chain's last event is always kept")
        upper = head.sequence - 1
    if upper <= anchor_sequence:
        return PurgeResult(**base, kept=kept)

    low = anchor_sequence + 1
    new_anchor_hash = events.filter(sequence=upper).values_list("hash", flat=True).first()
    if new_anchor_hash is None:
        raise RuntimeError(
            f"Audit event #{upper} of {slug} is missing; run `audit verify --org {slug}` before purging."
        )
    count = events.filter(sequence__lte=upper).count()
    if dry_run:
        return PurgeResult(
            **{**base, "anchor_sequence": upper, "anchor_hash": new_anchor_hash},
            purged=count,
            from_sequence=low,
            to_sequence=upper,
            kept=kept,
        )

    if postgres:
        # The database function checks the rules again with its owner's rights and its own clock, moves the anchor,
        # deletes and leaves an AuditPurge row: the role the services connect as needs no DELETE on events.
        deleted = _purge_in_database(organization_id=organization.pk, through=upper)
        purge = AuditPurge.objects.get(organization_id=organization.pk, to_sequence=upper)
    else:
        head.anchor_sequence, head.anchor_hash = upper, new_anchor_hash
        head.save(update_fields=["anchor_sequence", "anchor_hash"])
        deleted, _ = events.filter(sequence__lte=upper).delete()
        purge = AuditPurge.objects.create(
            organization_id=organization.pk,
            from_sequence=low,
            to_sequence=upper,
            anchor_hash=new_anchor_hash,
            deleted=deleted,
            retention_days=settings_row.retention_days,
            purged_at=now,
            database_user=str(connection.settings_dict.get("USER") or connection.vendor),
        )
    event = record(
        action="audit.purged",
        actor=actor,
        organization=organization,
        target=purge,  # how `audit verify` finds it: target columns are never redacted, unlike the data
        data={
            "from_sequence": low,
            "to_sequence": upper,
            "count": deleted,
            "cutoff": cutoff.isoformat(),
            "retention_days": settings_row.retention_days,
            "previous_anchor": {"sequence": anchor_sequence, "hash": anchor_hash},
            "anchor": {"sequence": upper, "hash": new_anchor_hash},
            "kept": kept,
        },
        immediate=True,  # the result names its sequence; the head is locked already
    )
    return PurgeResult(
        **{**base, "anchor_sequence": upper, "anchor_hash": new_anchor_hash},
        purged=deleted,
        from_sequence=low,
        to_sequence=upper,
        kept=kept,
        event_sequence=event.sequence,
    )


def _database_now() -> dt.datetime:
    """The database's clock (the transaction's start), which the purge function judges age by."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        return cursor.fetchone()[0]


def _purge_in_database(*, organization_id: int, through: int) -> int:
    """Call the purge function; its refusal (a race with a legal hold, a `now` ahead of the database's clock) as a
    ValidationError naming the reason."""
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT {PURGE_FUNCTION}(%s, %s)", [organization_id, through])
            return cursor.fetchone()[0]
    except DatabaseError as exc:
        message = str(exc).splitlines()[0] if exc.args else ""
        if message.startswith("audit purge refused"):
            raise ValidationError(message[0].upper() + message[1:] + ".") from None
        raise


def organizations_with_retention() -> list[Organization]:
    """Organizations that set a retention (those under legal hold included, so that the skip is recorded)."""
    return list(Organization.objects.filter(audit_settings__retention_days__isnull=False).order_by("slug"))
