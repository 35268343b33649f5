"""Batched chaining (`AUDIT_CHAINING = "batched"`): pending events are moved into the chain after commit.

In this mode `audit.record()` inserts an `AuditPendingEvent` in the caller's transaction without locking the
chain head, so writers of one organization no longer queue through each other's commits, and registers
`wake_chainer(org_id)` with `transaction.on_commit`. A rolled-back caller leaves no pending row, hence no event.

`chain_pending(org_id)` then, in one transaction per batch of at most `limit` rows: takes a per-organization
advisory lock on PostgreSQL (one chainer per organization at a time, so the rows it reads need no row locks;
on SQLite the database lock serializes writers), locks the chain head, reads the committed pending rows in id
order, gives them the next sequence numbers, hashes them with `audit.chain` (the same rule and canonical form
as immediate mode, so `audit.verify.verify_chain` checks them unchanged), bulk-inserts them as `AuditEvent`
rows with the same event id, deletes the pending rows and moves the head; thousands of events share one commit.
Afterwards it wakes SIEM forwarding (forwarding only ever reads chained events).

Order: events are chained in the order they become visible to the chainer, i.e. in commit order between
batches and in insert (id) order within one batch. `occurred_at` is the time `record()` was called, so within
a chain it is not strictly increasing as it is in immediate mode.

Who runs the chainer (`AUDIT_CHAINER`):
- `process`: one dedicated `python manage.py audit chainer` per deployment polls every organization's pending
  events (`run_chainer`) and chains them; writers only insert. This is the high-ingest shape: the hashing stays
  out of the web and worker processes, whose GIL it would otherwise hold against their own requests;
- `thread` (the default): a wake-up after each commit starts (or marks dirty) one background thread per
  organization in the writing process (web process or Celery worker alike; the wake-up stays in-process),
  which waits `AUDIT_CHAINER_DEBOUNCE_SECONDS` (50 ms) so that a burst shares one commit, then chains, until
  no wake-up arrived during its last round. When another process's chainer holds the organization's lock it
  tries again after the debounce (that chainer may have read its batch before our rows committed), so a
  wake-up is not lost;
- the Celery beat sweep `audit.chain_pending_all` (every 5 s; the embedded scheduler runs it too) chains
  whatever a crashed process or a failed wake-up left behind;
- `verify_chain` reports pending rows older than `AUDIT_PENDING_STALE_SECONDS` (the chainer is not running).
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import threading
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connections, router, transaction

from audit.chain import GENESIS_HASH, HASHED_FIELDS, PG_TIME_FORMAT, chain_hash, event_document
from audit.forwarding import schedule_forwarding
from audit.models import AuditChainHead, AuditEvent, AuditPendingEvent
from portal.background import CoalescingWorkers
from portal.db import driver_cursor

logger = logging.getLogger(__name__)

# The hashed fields a pending row carries (the id is `event_id`; organization and sequence come from the chainer).
PENDING_FIELDS = tuple(name for name in HASHED_FIELDS if name not in ("id", "organization_id", "sequence"))
# First half of the advisory lock key ("AUDT"), so that the lock does not collide with other advisory locks.
_LOCK_NAMESPACE = 0x41554454
_INSERT_BATCH = 1000
# Events chained per transaction by the in-process chainer.
BATCH_LIMIT = 5000
# A dedicated chainer's round that chained fewer events than this waits the debounce before the next one.
BUSY_ROUND_EVENTS = 1000


def _debounce() -> float:
    """Seconds a woken chainer waits before it chains (AUDIT_CHAINER_DEBOUNCE_SECONDS, at least 10 ms)."""
    return max(float(getattr(settings, "AUDIT_CHAINER_DEBOUNCE_SECONDS", 0.05)), 0.01)


def chaining_mode() -> str:
    """`immediate` or `batched` (settings.AUDIT_CHAINING)."""
    return str(getattr(settings, "AUDIT_CHAINING", "immediate"))


def chain_pending(organization_id: int, *, limit: int = 5000, wait: bool = False) -> int:
    """Move the organization's committed pending events into its chain; returns how many were chained.

    Loops in transactions of at most `limit` events while full batches remain. With `wait=False` it returns 0
    at once when another chainer holds the organization's lock (that one, the next wake-up or the sweep chains
    the rows); with `wait=True` it queues for the lock.
    """
    return _chain(organization_id, limit=limit, wait=wait) or 0


def chain_committed(organization_id: int) -> None:
    """Chain every event of the organization already committed, so that what follows sees the whole chain.

    For callers that read or sign the chain head (exports, checkpoints): in batched mode a committed event may
    still be pending, and the head would not cover it. Queues behind another chainer; in immediate mode there
    is nothing pending and this costs one query.
    """
    chain_pending(organization_id, wait=True)


def _chain(organization_id: int, *, limit: int, wait: bool) -> int | None:
    """Like chain_pending, but None when another chainer held the lock before the first batch.

    Then that chainer may have read its batch before our rows committed, so the caller must try again; once a
    batch of ours ran, any chainer that takes over reads after it, hence after every row committed before.
    """
    total = 0
    while True:
        chained = _chain_batch(organization_id, limit=limit, wait=wait)
        if chained is None:
            if total == 0:
                return None
            break
        total += chained
        if chained < limit:
            break
    if total:
        # After commit: a caller may hold this inside its own transaction (a checkpoint chains what is committed
        # first); outside one, on_commit runs it at once.
        transaction.on_commit(
            functools.partial(schedule_forwarding, organization_id), using=router.db_for_write(AuditEvent)
        )
    return total


def _lock_head(organization_id: int) -> tuple[int, str]:
    from audit.services import _lock_chain_head

    return _lock_chain_head(organization_id)


def _chain_batch(organization_id: int, *, limit: int, wait: bool) -> int | None:
    """One transaction: lock, read, hash, insert, delete, move the head. None when the lock is taken."""
    alias = router.db_for_write(AuditEvent)
    connection = connections[alias]
    with transaction.atomic(using=alias):
        if connection.vendor != "postgresql":
            return _chain_batch_orm(alias, organization_id, limit)
        key = (_LOCK_NAMESPACE << 32) | (organization_id & 0xFFFFFFFF)
        with connection.wrap_database_errors:
            cursor = driver_cursor(connection)
            if wait:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [key])
            else:
                cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [key])
                if not cursor.fetchone()[0]:
                    return None
            return _chain_batch_postgresql(connection, cursor, organization_id, limit)


def _hash_rows(organization_id: int, rows: list[tuple], sequence: int, prev_hash: str) -> list[tuple[int, str, str]]:
    """(sequence, prev_hash, hash) of each (pending id, event id, *PENDING_FIELDS) row, continuing the chain."""
    links = []
    for _pending_id, event_id, *values in rows:
        sequence += 1
        event_hash = chain_hash(prev_hash, event_document((str(event_id), organization_id, sequence, *values)))
        links.append((sequence, prev_hash, event_hash))
        prev_hash = event_hash
    return links


def _chain_batch_orm(alias: str, organization_id: int, limit: int) -> int:
    """SQLite (and any other database): the same steps through the ORM; the IMMEDIATE transaction serializes."""
    sequence, prev_hash = _lock_head(organization_id)
    rows = list(
        AuditPendingEvent.objects.using(alias)
        .filter(organization_id=organization_id)
        .order_by("id")
        .values_list("id", "event_id", *PENDING_FIELDS)[:limit]
    )
    if not rows:
        return 0
    links = _hash_rows(organization_id, rows, sequence, prev_hash)
    events = [
        AuditEvent(
            id=row[1],
            organization_id=organization_id,
            sequence=link[0],
            prev_hash=link[1],
            hash=link[2],
            **dict(zip(PENDING_FIELDS, row[2:], strict=True)),
        )
        for row, link in zip(rows, links, strict=True)
    ]
    AuditEvent.objects.using(alias).bulk_create(events, batch_size=_INSERT_BATCH)
    AuditPendingEvent.objects.using(alias).filter(pk__in=[row[0] for row in rows]).delete()
    AuditChainHead.objects.using(alias).filter(organization_id=organization_id).update(
        sequence=links[-1][0], hash=links[-1][2]
    )
    return len(rows)


_PG_SQL: dict[str, str] = {}


def _postgresql_statements(connection: Any) -> tuple[str, str]:
    """The read and the move statements (table and column names come from the models; values are parameters)."""
    if not _PG_SQL:
        quote = connection.ops.quote_name
        pending, events = AuditPendingEvent._meta.db_table, AuditEvent._meta.db_table
        columns = [quote(AuditPendingEvent._meta.get_field(name).column) for name in PENDING_FIELDS]
        # The data as text (parsed here, as verification parses it) and the time already in the hashed form
        # (parsing a timestamp and formatting it again cost a third of the chainer's CPU per event).
        read_as = {"data": "{}::text", "occurred_at": f"to_char({{}} AT TIME ZONE 'UTC', '{PG_TIME_FORMAT}')"}
        selected = ", ".join(
            read_as.get(name, "{}").format(column) for name, column in zip(PENDING_FIELDS, columns, strict=True)
        )
        _PG_SQL["read"] = (
            f"SELECT id, event_id::text, {selected} FROM {pending} "  # noqa: S608
            "WHERE organization_id = %s ORDER BY id LIMIT %s"
        )
        _PG_SQL["read_many"] = (
            f"SELECT id, organization_id, event_id::text, {selected} FROM {pending} "  # noqa: S608
            "WHERE organization_id = ANY(%b::bigint[]) ORDER BY id LIMIT %s"
        )
        # The organizations with pending events, one index probe each (a "loose index scan" over the
        # (organization, id) index): a DISTINCT would read the whole table, dead rows of chained events included.
        _PG_SQL["organizations"] = (
            "WITH RECURSIVE organizations(id) AS ("  # noqa: S608
            f"(SELECT organization_id FROM {pending} ORDER BY organization_id LIMIT 1) UNION ALL "
            f"SELECT (SELECT organization_id FROM {pending} WHERE organization_id > organizations.id "
            "ORDER BY organization_id LIMIT 1) FROM organizations WHERE organizations.id IS NOT NULL) "
            "SELECT id FROM organizations WHERE id IS NOT NULL"
        )
        head_table = quote(AuditChainHead._meta.db_table)
        _PG_SQL["heads"] = (
            f"UPDATE {head_table} SET sequence = moved.sequence, hash = moved.hash "  # noqa: S608
            "FROM unnest(%b::bigint[], %b::bigint[], %b::text[]) AS moved(organization_id, sequence, hash) "
            f"WHERE {head_table}.organization_id = moved.organization_id"
        )
        # No row locks: the advisory lock already makes this the organization's only chainer, and a row lock
        # would cost a WAL record per event. Rows not yet committed are simply not visible.
        # Copy the rows inside the database (the values never travel back), deleting them in the same statement.
        _PG_SQL["move"] = (
            f"WITH moved AS (DELETE FROM {pending} WHERE id = ANY(%b::bigint[]) RETURNING *), "  # noqa: S608
            f"chained AS (INSERT INTO {events} (id, organization_id, sequence, {', '.join(columns)}, prev_hash, hash) "
            f"SELECT moved.event_id, moved.organization_id, link.sequence, "
            f"{', '.join(f'moved.{column}' for column in columns)}, link.prev_hash, link.hash "
            "FROM moved JOIN unnest(%b::bigint[], %b::bigint[], %b::text[], %b::text[]) "
            "AS link(pending_id, sequence, prev_hash, hash) ON link.pending_id = moved.id RETURNING 1) "
            "SELECT count(*) FROM chained"
        )
    return _PG_SQL["read"], _PG_SQL["move"]


def _chain_batch_postgresql(connection: Any, cursor: Any, organization_id: int, limit: int) -> int:
    """PostgreSQL, under the advisory lock: four round trips per batch whatever its size."""
    read, move = _postgresql_statements(connection)
    cursor.execute(read, [organization_id, limit])
    rows = [(*row[:-1], json.loads(row[-1])) for row in cursor.fetchall()]
    if not rows:
        return 0
    sequence, prev_hash = _lock_heads_postgresql(cursor, [organization_id])[organization_id]
    links = _hash_rows(organization_id, rows, sequence, prev_hash)
    cursor.execute(
        move,
        [
            [row[0] for row in rows],
            [row[0] for row in rows],
            [link[0] for link in links],
            [link[1] for link in links],
            [link[2] for link in links],
        ],
    )
    moved = cursor.fetchone()[0]
    if moved != len(rows):  # cannot happen while the rows are locked; never move the head past a short insert
        raise RuntimeError(f"chained {moved} of {len(rows)} pending events of organization {organization_id}")
    cursor.execute(_PG_SQL["heads"], [[organization_id], [links[-1][0]], [links[-1][2]]])
    return len(rows)


def chain_all_pending() -> int:
    """The sweep: chain every organization's pending events (skipping organizations a chainer is working on)."""
    organization_ids = list(AuditPendingEvent.objects.order_by().values_list("organization_id", flat=True).distinct())
    total = 0
    for organization_id in organization_ids:
        try:
            total += chain_pending(organization_id)
        except Exception:  # one organization's failure must not stop the others; the next sweep retries
            logger.exception("could not chain pending audit events of organization %s", organization_id)
    return total


def chain_every_organization(*, limit: int = BATCH_LIMIT) -> int:
    """The dedicated chainer's round: every organization's pending events, in one transaction per batch.

    On PostgreSQL the organizations share each transaction (one read, one move, one head update and one commit
    for all of them), so many organizations with a few events each cost what one organization with many does;
    organizations whose lock another chainer holds are left to it. Elsewhere it is `chain_all_pending`.
    """
    alias = router.db_for_write(AuditEvent)
    if connections[alias].vendor != "postgresql":
        return chain_all_pending()
    total = 0
    while True:
        try:
            with transaction.atomic(using=alias):
                chained, organization_ids = _chain_many_postgresql(connections[alias], limit)
        except DatabaseError:
            # One organization's failure must not hold back the others: chain them one by one this round,
            # where a failure stays with its organization (and is logged).
            logger.exception("could not chain the pending audit events of all organizations at once")
            return total + chain_all_pending()
        for organization_id in organization_ids:
            schedule_forwarding(organization_id)
        total += chained
        if chained < limit:
            return total


def _chain_many_postgresql(connection: Any, limit: int) -> tuple[int, list[int]]:
    """One transaction over every organization with pending events whose lock is free: (events, organizations)."""
    read, move = _postgresql_statements(connection)
    with connection.wrap_database_errors:
        cursor = driver_cursor(connection)
        cursor.execute(_PG_SQL["organizations"])
        candidates = [row[0] for row in cursor.fetchall()]
        if not candidates:
            return 0, []
        cursor.execute(
            "SELECT organization_id FROM unnest(%s::bigint[]) AS organization_id "
            "WHERE pg_try_advisory_xact_lock((%s::bigint << 32) | (organization_id & 4294967295))",
            [candidates, _LOCK_NAMESPACE],
        )
        locked = [row[0] for row in cursor.fetchall()]
        if not locked:
            return 0, []
        # Read after taking the locks: every row another chainer moved before releasing one is gone by now.
        cursor.execute(_PG_SQL["read_many"], [locked, limit])
        rows_by_organization: dict[int, list[tuple]] = {}
        for row in cursor.fetchall():
            rows_by_organization.setdefault(row[1], []).append((row[0], *row[2:-1], json.loads(row[-1])))
        if not rows_by_organization:
            return 0, []
        pending_ids, sequences, prev_hashes, hashes, heads = [], [], [], [], []
        locked_heads = _lock_heads_postgresql(cursor, list(rows_by_organization))
        for organization_id, rows in rows_by_organization.items():
            sequence, prev_hash = locked_heads[organization_id]
            links = _hash_rows(organization_id, rows, sequence, prev_hash)
            pending_ids += [row[0] for row in rows]
            sequences += [link[0] for link in links]
            prev_hashes += [link[1] for link in links]
            hashes += [link[2] for link in links]
            heads.append((organization_id, links[-1][0], links[-1][2]))
        cursor.execute(move, [pending_ids, pending_ids, sequences, prev_hashes, hashes])
        moved = cursor.fetchone()[0]
        if moved != len(pending_ids):  # cannot happen under the locks; never move a head past a short insert
            raise RuntimeError(f"chained {moved} of {len(pending_ids)} pending events")
        cursor.execute(
            _PG_SQL["heads"],
            [[head[0] for head in heads], [head[1] for head in heads], [head[2] for head in heads]],
        )
    return len(pending_ids), list(rows_by_organization)


def _lock_heads_postgresql(cursor: Any, organization_ids: list[int]) -> dict[int, tuple[int, str]]:
    """Lock the organizations' chain heads (created where missing) in id order: {organization: (sequence, hash)}.

    Two statements whatever the number of organizations; id order is the order every other writer locks in.
    """
    head_table = AuditChainHead._meta.db_table
    cursor.execute(
        f"INSERT INTO {head_table} (organization_id, sequence, hash, anchor_sequence, anchor_hash) "  # noqa: S608
        "SELECT organization_id, 0, %s, 0, %s FROM unnest(%b::bigint[]) AS organization_id "
        "ON CONFLICT DO NOTHING",
        [GENESIS_HASH, GENESIS_HASH, organization_ids],
    )
    cursor.execute(
        f"SELECT organization_id, sequence, hash FROM {head_table} "  # noqa: S608
        "WHERE organization_id = ANY(%b::bigint[]) ORDER BY organization_id FOR UPDATE",
        [organization_ids],
    )
    return {organization_id: (sequence, head_hash) for organization_id, sequence, head_hash in cursor.fetchall()}


# In-process wake-ups --------------------------------------------------------------------------------------------


def _chain_round(organization_id: int) -> bool:
    """One round of a chainer thread; True (run again after the debounce) when another chainer held the lock.

    That chainer may have read its batch before our rows committed, so a wake-up is not lost.
    """
    return _chain(organization_id, limit=BATCH_LIMIT, wait=False) is None


# Errors of a round are logged and leave the rows pending: the next wake-up or the sweep chains them.
_chainers = CoalescingWorkers("audit-chainer", _chain_round, _debounce)


def chainer_kind() -> str:
    """`thread` (a chainer thread in each writing process) or `process` (`manage.py audit chainer` runs it)."""
    return str(getattr(settings, "AUDIT_CHAINER", "thread"))


def wake_chainer(organization_id: int) -> None:
    """After a pending event commits: make sure this process's chainer for the organization runs (once more).

    Nothing to do when a dedicated chainer process (`AUDIT_CHAINER = "process"`) polls for pending events.
    """
    if chainer_kind() == "process":
        return
    try:
        _chainers.wake(organization_id)
        _chain_before_exit()
    except Exception:  # the event is committed; the sweep chains it
        logger.exception("could not wake the audit chainer for organization %s", organization_id)


# How long a process that is exiting waits for its chainer threads (they are daemons: exit would kill them).
EXIT_WAIT_SECONDS = 30.0


@functools.cache
def _chain_before_exit() -> None:
    """Once per process: at exit, wait for the chainer threads, so that a short-lived process (a management
    command, a script) leaves no event pending for want of a sweep."""
    atexit.register(wait_until_chained, EXIT_WAIT_SECONDS)


def run_chainer(*, stop: threading.Event, idle_seconds: float | None = None) -> int:
    """The dedicated chainer (`manage.py audit chainer`): chain every organization's pending events until `stop`.

    Polls: a round that chained fewer than BUSY_ROUND_EVENTS sleeps `idle_seconds` (the debounce, 50 ms, by
    default), so events wait at most about that long; a round of more goes again at once.
    Waiting after small rounds too makes a steady stream of events arrive in batches of hundreds rather than
    dozens: each round costs the same few statements and a commit whatever its size (measured with 8 writers:
    75 events a round without the wait, 480 with it, and a third less CPU per event in the chainer).

    Returns how many events it chained. Hashing here, rather than in a thread of each writing process, keeps
    the GIL of the web and worker processes free for their own work: a chainer thread hashing a batch delays
    its writer's every return from the database.
    """
    pause = _debounce() if idle_seconds is None else idle_seconds
    total = 0
    while not stop.is_set():
        try:
            chained = chain_every_organization()
        except Exception:  # the database went away: log, wait, try again
            logger.exception("audit chainer round failed")
            connections.close_all()
            chained = 0
        total += chained
        if chained < BUSY_ROUND_EVENTS:
            stop.wait(pause)
    connections.close_all()
    return total


def wait_until_chained(timeout: float = 10.0) -> bool:
    """Wait for this process's chainer threads to finish (tests, benchmarks, shutdown); False on timeout."""
    return _chainers.wait_until_idle(timeout)


def chainer_threads_running() -> bool:
    """Whether a chainer thread of this process is alive."""
    return _chainers.running()
