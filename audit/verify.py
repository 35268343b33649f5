"""Check an organization's hash chain: every event's content, its link to the one before, and the head.

The events are streamed in sequence order as plain value tuples (no model instance per event) and hashed
with `audit.chain`, the single source of the hashing rule. On PostgreSQL a long chain is split into
consecutive sequence ranges checked by forked worker processes that share the parent's snapshot; the
parent then checks the links between the ranges, so the result is the same as one pass.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import multiprocessing
import os
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.db.models import Count, Min, QuerySet

from audit.chain import GENESIS_HASH, HASHED_FIELDS, chain_hash, event_document
from audit.models import AuditChainHead, AuditCheckpoint, AuditEvent, AuditPendingEvent, AuditPurge
from audit.selectors import with_time_text
from organizations.models import Organization

# Rows fetched per round trip; large enough that a million events take a few hundred fetches.
CHUNK_SIZE = 5000
# From this many events on, PostgreSQL chains are checked by several processes (one per CPU, at most 8).
PARALLEL_MIN_EVENTS = 100_000
MAX_WORKERS = 8
_SNAPSHOT_ID = re.compile(r"[0-9A-F]+-[0-9A-F]+(-[0-9]+)?")

_COLUMNS = (*HASHED_FIELDS, "prev_hash", "hash")
_SEQUENCE = HASHED_FIELDS.index("sequence")
_DATA = HASHED_FIELDS.index("data")


@dataclass(frozen=True)
class VerificationResult:
    """What `verify_chain` found: ok, or the first event that breaks the chain and why, in words."""

    ok: bool
    events_checked: int
    first_bad_sequence: int | None
    reason: str
    head_sequence: int
    head_hash: str
    # The latest signed checkpoint that was checked (None: the organization has none yet).
    checkpoint_sequence: int | None = None
    checkpoint_signed_at: dt.datetime | None = None
    checkpoint_key_id: str = ""


def verify_chain(
    *, organization: Organization, since_sequence: int | None = None, workers: int | None = None
) -> VerificationResult:
    """Recompute the organization's chain from its anchor (or from `since_sequence`) and report the first break.

    Detects an altered event (its stored hash no longer matches its content), a broken link (prev_hash is
    not the hash of the event before: reordered, replaced or inserted events), a gap or a repeat in the
    sequence numbers (removed or duplicated events), and a truncated or overrun tail (the chain head row
    disagrees with the last event). The latest signed checkpoint must carry a valid signature of the configured
    key and its sequence must still hold the hash it signed: a tail removed together with a rewound head row is
    reported naming the checkpoint. With `since_sequence`, the hash stored on the event before it is
    trusted as the starting point, so only the events from that number on are checked.
    `workers` forces the number of processes (1: a single pass); by default long PostgreSQL chains use one
    per CPU. Raises ValueError when `since_sequence` is below 1 or past the head.
    With batched chaining, pending events older than `AUDIT_PENDING_STALE_SECONDS` make an otherwise intact
    chain fail ("N events written but not chained for S s"); younger ones are normal and not reported.
    """
    if since_sequence is not None and since_sequence < 1:
        raise ValueError(f"Cannot verify from #{since_sequence}: sequence numbers start at 1.")
    with _snapshot() as snapshot_owned:
        result = _verify(
            organization=organization,
            since_sequence=since_sequence,
            workers=workers,
            can_fork=snapshot_owned,
        )
        if not result.ok:
            return result
        problem = _stale_pending(organization)
        if problem is None:
            return result
        return dataclasses.replace(result, ok=False, first_bad_sequence=result.head_sequence + 1, reason=problem)


def _stale_pending(organization: Organization) -> str | None:
    """Batched chaining: events committed but still not chained after AUDIT_PENDING_STALE_SECONDS, in words.

    Fresh pending rows are normal (the chainer runs right after commit); old ones mean no chainer runs.
    """
    stale_seconds = float(getattr(settings, "AUDIT_PENDING_STALE_SECONDS", 60))
    now = dt.datetime.now(dt.UTC)
    stale = AuditPendingEvent.objects.filter(
        organization_id=organization.pk, occurred_at__lte=now - dt.timedelta(seconds=stale_seconds)
    ).aggregate(count=Count("id"), oldest=Min("occurred_at"))
    if not stale["count"]:
        return None
    waited = (now - stale["oldest"]).total_seconds()
    return f"{stale['count']} events written but not chained for {waited:.0f} s: is the chainer running?"


@contextlib.contextmanager
def _snapshot() -> Iterator[bool]:
    """One consistent, read-only view of the log on PostgreSQL; yields whether this call owns that snapshot.

    SQLite is left alone: a transaction there would take the write lock (IMMEDIATE mode) for the whole run.
    Inside a caller's transaction the caller's view is used (and no worker could see its uncommitted rows).
    """
    if connection.vendor != "postgresql":
        yield False
        return
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        if outermost:
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield outermost


@dataclass(frozen=True)
class _Scan:
    """What one pass over consecutive events found (in the parent, or in one worker for one range)."""

    first_sequence: int | None = None
    first_prev_hash: str = ""
    last_sequence: int | None = None
    last_hash: str = ""
    checked: int = 0
    bad_sequence: int | None = None
    reason: str = ""


def _missing(after: int, found: int) -> str:
    if found - after == 2:
        return f"event #{after + 1} is missing"
    return f"events #{after + 1} to #{found - 1} are missing"


def _link_problem(prev_sequence: int, prev_hash: str, sequence: int, stored_prev: str) -> tuple[int, str] | None:
    """Why an event cannot follow the one before it (sequence gap or repeat, or a broken prev_hash), if it can't."""
    if sequence <= prev_sequence:
        return sequence, f"event #{sequence} appears more than once (a repeated event)"
    if sequence > prev_sequence + 1:
        return prev_sequence + 1, (
            f"sequence jumps from #{prev_sequence} to #{sequence}: {_missing(prev_sequence, sequence)}"
        )
    if stored_prev != prev_hash:
        return sequence, (
            f"event #{sequence}: prev_hash does not match the hash of the event before it "
            "(events reordered, replaced or inserted, or prev_hash altered)"
        )
    return None


def _scan(rows: Iterable[tuple]) -> _Scan:
    """Check a run of events in sequence order: links inside the run and every event's content hash."""
    first_sequence: int | None = None
    first_prev = ""
    last_sequence: int | None = None
    last_hash = ""
    checked = 0
    for row in rows:
        sequence, stored_prev, stored_hash = row[_SEQUENCE], row[-2], row[-1]
        if first_sequence is None:
            first_sequence, first_prev = sequence, stored_prev
        else:
            problem = _link_problem(last_sequence, last_hash, sequence, stored_prev)
            if problem is not None:
                return _Scan(first_sequence, first_prev, last_sequence, last_hash, checked, *problem)
        if chain_hash(stored_prev, event_document(row)) != stored_hash:
            reason = f"event #{sequence}: stored hash does not match its content (altered)"
            return _Scan(first_sequence, first_prev, last_sequence, last_hash, checked, sequence, reason)
        checked += 1
        last_sequence, last_hash = sequence, stored_hash
    return _Scan(first_sequence, first_prev, last_sequence, last_hash, checked)


def _verify(
    *, organization: Organization, since_sequence: int | None, workers: int | None, can_fork: bool
) -> VerificationResult:
    events = AuditEvent.objects.filter(organization_id=organization.pk)
    head = AuditChainHead.objects.filter(organization_id=organization.pk).first()
    if head is None:
        first = events.order_by("sequence").values_list("sequence", flat=True).first()
        if first is None:
            checkpoint = _latest_checkpoint(organization)
            if checkpoint is not None and checkpoint.sequence > 0:
                return VerificationResult(False, 0, 1, _gone(checkpoint), 0, GENESIS_HASH)
            return VerificationResult(True, 0, None, "", 0, GENESIS_HASH)
        reason = f"the chain head row is missing but the log holds events from #{first} on"
        return VerificationResult(False, 0, first, reason, 0, "")

    def failed(checked: int, sequence: int, reason: str) -> VerificationResult:
        return VerificationResult(False, checked, sequence, reason, head.sequence, head.hash)

    if since_sequence is not None and since_sequence > head.sequence + 1:
        raise ValueError(f"Cannot verify from #{since_sequence}: the chain head is #{head.sequence}.")
    start = head.anchor_sequence + 1
    prev_hash = head.anchor_hash
    if since_sequence is not None and since_sequence > start:
        stored = events.filter(sequence=since_sequence - 1).values_list("hash", flat=True).first()
        if stored is None:
            reason = f"event #{since_sequence - 1} is missing (verifying from #{since_sequence} starts from its hash)"
            return failed(0, since_sequence - 1, reason)
        start, prev_hash = since_sequence, stored

    in_range = events.filter(sequence__gte=start, sequence__lte=head.sequence)
    scans = _scan_ranges(in_range, start, head.sequence, _worker_count(workers, head.sequence - start + 1, can_fork))

    # Stitch the runs together, from the anchor (or the starting point) on.
    last_sequence, checked = start - 1, 0
    for scan in scans:
        if scan.first_sequence is not None:
            problem = _link_problem(last_sequence, prev_hash, scan.first_sequence, scan.first_prev_hash)
            if problem is not None:
                return failed(checked, *problem)
        if scan.bad_sequence is not None:
            return failed(checked + scan.checked, scan.bad_sequence, scan.reason)
        if scan.checked:
            last_sequence, prev_hash, checked = scan.last_sequence, scan.last_hash, checked + scan.checked

    if last_sequence < head.sequence:
        ends = f"#{last_sequence}" if last_sequence > head.anchor_sequence else "its anchor (no events)"
        return failed(
            checked,
            last_sequence + 1,
            f"chain head says #{head.sequence} but the log ends at {ends}: events were removed from the end",
        )
    if prev_hash != head.hash:
        return failed(
            checked,
            head.sequence,
            f"chain head hash does not match event #{head.sequence}: the head or the last event was replaced",
        )
    first_beyond = (
        events.filter(sequence__gt=head.sequence).order_by("sequence").values_list("sequence", flat=True).first()
    )
    if first_beyond is not None and not _appended_since(organization, first_beyond):
        return failed(
            checked,
            first_beyond,
            f"the log continues past the chain head (#{head.sequence}) with event #{first_beyond}: "
            "events were written without moving the head",
        )
    problem = _purge_problem(organization, head, events)
    if problem is not None:
        return failed(checked, *problem)
    checkpoint = _latest_checkpoint(organization)
    if checkpoint is None:
        return VerificationResult(True, checked, None, "", head.sequence, head.hash)
    problem = _checkpoint_problem(checkpoint, head, events)
    if problem is not None:
        return failed(checked, *problem)
    return VerificationResult(
        True,
        checked,
        None,
        "",
        head.sequence,
        head.hash,
        checkpoint.sequence,
        checkpoint.signed_at,
        checkpoint.key_id,
    )


# Purge records -----------------------------------------------------------------------------------------------


def _purge_problem(organization: Organization, head: AuditChainHead, events: QuerySet) -> tuple[int, str] | None:
    """The newest purge record (written by the database's purge function) must match the chain's anchor and have its
    `audit.purged` event: a purge made by calling the function outside Airlock's retention service has none.

    Only the newest is checked: a later purge may legitimately remove an earlier purge's event.
    """
    purge = AuditPurge.objects.filter(organization_id=organization.pk).order_by("-to_sequence").first()
    if purge is None:
        return None
    named = f"the purge of #{purge.from_sequence} to #{purge.to_sequence} at {purge.purged_at:%Y-%m-%d %H:%M:%S} UTC"
    if (head.anchor_sequence, head.anchor_hash) != (purge.to_sequence, purge.anchor_hash):
        return head.anchor_sequence, f"the chain anchor is not where {named} left it: the anchor was moved"
    # Found by its target, which redaction never touches (the organization's patterns may mask the event's data).
    recorded = events.filter(
        action="audit.purged",
        sequence__gt=purge.to_sequence,
        target_type=AuditPurge._meta.label_lower,
        target_id=str(purge.pk),
    ).exists()
    if not recorded:
        return purge.to_sequence, (
            f"{named} (database user {purge.database_user}) has no audit.purged event: "
            "the purge function was called outside Airlock's retention service"
        )
    return None


# Signed checkpoints ------------------------------------------------------------------------------------------


def _latest_checkpoint(organization: Organization) -> AuditCheckpoint | None:
    from audit.checkpoints import latest_checkpoint

    return latest_checkpoint(organization)


def _named(checkpoint: AuditCheckpoint) -> str:
    signed_at = checkpoint.signed_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"checkpoint #{checkpoint.sequence} signed at {signed_at}"


def _gone(checkpoint: AuditCheckpoint) -> str:
    return f"{_named(checkpoint)} is no longer in the log: events were removed from the end"


def _checkpoint_problem(checkpoint: AuditCheckpoint, head: AuditChainHead, events: QuerySet) -> tuple[int, str] | None:
    """Why the latest checkpoint does not vouch for this chain (bad signature, or its event gone or replaced), if so.

    The checkpoint's event is read on its own (one indexed row): the scan already proved every event from the
    anchor to the head, so a matching hash there ties the signed head to the verified chain.
    """
    from audit import signing
    from audit.checkpoints import checkpoint_signature_valid

    try:
        configured_key = signing.key_id()
    except ImproperlyConfigured:
        return checkpoint.sequence, f"{_named(checkpoint)} cannot be checked: AIRLOCK_AUDIT_SIGNING_KEY is not set"
    if checkpoint.key_id != configured_key:
        return checkpoint.sequence, (
            f"{_named(checkpoint)}: checkpoint signature invalid (signed by key {checkpoint.key_id[:16]}, "
            f"not the configured key {configured_key[:16]}; after changing keys, write a new checkpoint)"
        )
    if not checkpoint_signature_valid(checkpoint):
        return checkpoint.sequence, f"{_named(checkpoint)}: checkpoint signature invalid (forged or altered)"
    if checkpoint.sequence == head.anchor_sequence:
        stored: str | None = head.anchor_hash
    elif checkpoint.sequence < head.anchor_sequence:
        return checkpoint.sequence, (
            f"{_named(checkpoint)} lies before the chain's anchor #{head.anchor_sequence}: "
            "the events it vouches for were removed outside the retention purge"
        )
    else:
        stored = events.filter(sequence=checkpoint.sequence).values_list("hash", flat=True).first()
    if checkpoint.sequence > head.sequence:
        # Without a snapshot (SQLite) a checkpoint may have been signed after the head was read: then its event
        # is in the log now, with the signed hash. Otherwise the head row was rewound over a removed tail.
        if stored == checkpoint.hash:
            return None
        return head.sequence + 1, _gone(checkpoint)
    if stored is None:
        return checkpoint.sequence, _gone(checkpoint)
    if stored != checkpoint.hash:
        return checkpoint.sequence, (
            f"{_named(checkpoint)} does not match event #{checkpoint.sequence}: "
            "the log was cut back and rewritten after it was signed"
        )
    return None


def _appended_since(organization: Organization, sequence: int) -> bool:
    """Whether an event past the head we read was appended by a writer since (the head has moved on to it).

    Inside the PostgreSQL snapshot the head reads the same as before, so this is False there.
    """
    current = AuditChainHead.objects.filter(organization_id=organization.pk).values_list("sequence", flat=True).first()
    return current is not None and current >= sequence


# Reading rows -------------------------------------------------------------------------------------------------


def _psycopg3() -> bool:
    try:
        from django.db.backends.postgresql.psycopg_any import is_psycopg3
    except ImportError:  # pragma: no cover - only with a Django build lacking the PostgreSQL backend
        return False
    return is_psycopg3


def _fast_rows(db: Any, sql: str, params: Any) -> Iterator[tuple]:
    """Run the ORM's SQL on a server-side cursor whose loaders build the values in C.

    uuid comes as text, timestamptz as an aware datetime, and the jsonb text is parsed here with
    `json.loads`: that costs half of Django's per-row converters (a Python timestamptz loader, then JSON
    decoding) or of psycopg's own jsonb loader.
    """
    from psycopg.types.datetime import TimestamptzLoader
    from psycopg.types.string import TextLoader

    with db.chunked_cursor() as cursor:
        adapters = cursor.cursor.adapters
        adapters.register_loader("uuid", TextLoader)
        adapters.register_loader("timestamptz", TimestamptzLoader)
        adapters.register_loader("jsonb", TextLoader)
        cursor.execute(sql, params)
        loads = json.loads
        while chunk := cursor.fetchmany(CHUNK_SIZE):
            for row in chunk:
                yield (*row[:_DATA], loads(row[_DATA]), *row[_DATA + 1 :])


def _rows(queryset: QuerySet) -> Iterator[tuple]:
    """Stream the queryset's value tuples (in `_COLUMNS` order) in chunks, without a model instance per event."""
    if connection.vendor == "postgresql" and _psycopg3():
        sql, params = queryset.query.sql_with_params()
        return _fast_rows(connection, sql, params)
    return queryset.iterator(chunk_size=CHUNK_SIZE)


def _range_queryset(queryset: QuerySet, low: int, high: int) -> QuerySet:
    events, columns = with_time_text(queryset.filter(sequence__gte=low, sequence__lte=high), _COLUMNS)
    return events.order_by("sequence").values_list(*columns)


# Parallel checking ---------------------------------------------------------------------------------------------


def _worker_count(requested: int | None, events: int, can_fork: bool) -> int:
    """How many processes to scan with: 1 unless forking is both safe and worth it.

    Several only on PostgreSQL, in a snapshot this call owns, from a process that may safely fork (one
    thread, and not itself a daemonic pool worker such as a Celery prefork child).
    """
    possible = (
        can_fork
        and connection.vendor == "postgresql"
        and _psycopg3()
        and "fork" in multiprocessing.get_all_start_methods()
        and threading.active_count() == 1
        and not multiprocessing.current_process().daemon
    )
    if not possible:
        return 1
    if requested is not None:
        return max(1, min(requested, MAX_WORKERS, events))
    if events < PARALLEL_MIN_EVENTS:
        return 1
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


def _scan_ranges(queryset: QuerySet, low: int, high: int, workers: int) -> list[_Scan]:
    """Scan [low, high] in one pass, or split into consecutive ranges scanned by forked workers."""
    if workers <= 1 or high < low:
        return [_scan(_rows(_range_queryset(queryset, low, high)))]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_export_snapshot()")
        snapshot = cursor.fetchone()[0]
    size = (high - low + workers) // workers
    tasks = []
    for start in range(low, high + 1, size):
        sql, params = _range_queryset(queryset, start, min(start + size - 1, high)).query.sql_with_params()
        tasks.append((sql, tuple(params), snapshot))
    with multiprocessing.get_context("fork").Pool(processes=len(tasks)) as pool:
        return pool.map(_scan_in_worker, tasks, chunksize=1)


def _scan_in_worker(task: tuple[str, tuple, str]) -> _Scan:
    """In a forked worker: open a connection of its own, join the parent's snapshot, scan one range.

    The connection inherited from the parent is never touched (closing it would end the parent's session);
    the worker exits without finalizing it.
    """
    sql, params, snapshot = task
    if not _SNAPSHOT_ID.fullmatch(snapshot):
        raise ValueError(f"Unexpected snapshot id {snapshot!r}")
    inherited = connections[DEFAULT_DB_ALIAS]
    db = type(inherited)(dict(inherited.settings_dict), alias=DEFAULT_DB_ALIAS)
    try:
        db.set_autocommit(False)
        with db.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cursor.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
        return _scan(_fast_rows(db, sql, params))
    finally:
        db.close()


def verify_chain_recorded(
    *, organization: Organization, actor: Any, since_sequence: int | None = None
) -> VerificationResult:
    """`verify_chain`, then the verification itself recorded as `audit.verified` (an operator's read of the log).

    Outcome success, or failure with the first bad sequence and the reason as its error; its data holds what
    was checked (count, range start, head, checkpoint), so the log shows when it was last found intact.
    """
    from audit.services import record  # audit.services imports much of the app; verification needs none of it

    result = verify_chain(organization=organization, since_sequence=since_sequence)
    with transaction.atomic():
        record(
            action="audit.verified",
            actor=actor,
            organization=organization,
            outcome="success" if result.ok else "failure",
            error="" if result.ok else f"#{result.first_bad_sequence}: {result.reason}",
            data={
                "events_checked": result.events_checked,
                "since_sequence": since_sequence,
                "head_sequence": result.head_sequence,
                "head_hash": result.head_hash,
                "first_bad_sequence": result.first_bad_sequence,
                "checkpoint_sequence": result.checkpoint_sequence,
            },
        )
    return result
