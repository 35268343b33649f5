"""Read an organization's events for export in constant memory: a page of sequence numbers at a time.

Sequence numbers are gapless, so the log is read in consecutive sequence ranges of PAGE_SIZE
(`sequence >= n AND sequence < n + PAGE_SIZE`): each page is one bounded range scan of the
(organization, sequence) unique index whatever the planner's statistics say, no server-side cursor or
long transaction is held between pages, and a million events cost two hundred short queries. An export is
bounded by the chain head it started from (`upto_sequence`), so events appended while it runs (its own
`audit.exported` among them) are not in it.

On PostgreSQL (psycopg 3) a page is fetched with psycopg's C loaders (uuid as text, timestamptz as an
aware datetime, jsonb as text parsed with `json.loads`) instead of Django's per-value converters, the same
way `audit.verify` reads the chain: the rows are the same values, read at several times the speed.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from django.conf import settings
from django.db import connection, connections
from django.db.models import Max, Min, QuerySet

from audit.chain import HASHED_FIELDS
from audit.exporters.raw import RawJSON
from audit.models import AuditEvent
from audit.selectors import with_time_text
from organizations.models import Organization

PAGE_SIZE = 5000
# Rows rendered into one chunk of output.
RENDER_ROWS = 1000
COLUMNS = (*HASHED_FIELDS, "prev_hash", "hash")
_SEQUENCE = COLUMNS.index("sequence")
_DATA = COLUMNS.index("data")


def iter_value_pages(
    *,
    organization: Organization,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    upto_sequence: int | None = None,
    page_size: int = PAGE_SIZE,
    raw_data: bool = False,
) -> Iterator[list[tuple]]:
    """The organization's events in sequence order, a page of value tuples (in COLUMNS order) at a time.

    `since` is inclusive, `until` exclusive; `upto_sequence` caps the export at a chain head. Pages hold at
    most `page_size` rows; pages without a row in the time range are skipped. With `raw_data`, PostgreSQL's
    JSON text of `data` is passed on unparsed as a `RawJSON`, and the time as `format_time`'s text (for
    formatters that declare `RAW_DATA`).
    """
    events = AuditEvent.objects.filter(organization_id=organization.pk)
    if upto_sequence is not None:
        events = events.filter(sequence__lte=upto_sequence)
    bounds = events.aggregate(low=Min("sequence"), high=Max("sequence"))
    if bounds["low"] is None:
        return
    if since is not None:
        events = events.filter(occurred_at__gte=since)
    if until is not None:
        events = events.filter(occurred_at__lt=until)
    columns = COLUMNS
    if raw_data:  # formatters that take raw values also take the time as text, written by PostgreSQL
        events, columns = with_time_text(events, columns)
    events = events.order_by("sequence").values_list(*columns)
    starts = range(bounds["low"], bounds["high"] + 1, page_size)
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        # Outside a transaction every page query sees what is committed, whichever connection runs it: a reader
        # thread with its own connection fetches the next page while this one's rows are rendered.
        yield from _read_ahead(events, starts, page_size, raw_data)
        return
    for start in starts:
        page = _fetch(events.filter(sequence__gte=start, sequence__lt=start + page_size), raw_data)
        if page:
            yield page
        del page  # drop this page before the next one is fetched: one page in memory, not two


_STOP_POLL_SECONDS = 0.5


def _read_ahead(events: QuerySet, starts: range, page_size: int, raw_data: bool) -> Iterator[list[tuple]]:
    """The pages of `events`, fetched by a reader thread one page ahead of the consumer.

    PostgreSQL builds and sends a page while the consumer renders the one before. At most three pages are alive
    (rendered, queued, being fetched). An error in the reader is raised here; closing this generator early (a
    client that went away) stops the reader, which closes its connection.
    """
    handoff: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def hand_over(item: object) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=_STOP_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for start in starts:
                page = _fetch(events.filter(sequence__gte=start, sequence__lt=start + page_size), raw_data)
                if page and not hand_over(page):
                    return
                del page
            hand_over(_END)
        except BaseException as exc:  # handed to the consumer, which raises it
            hand_over(exc)
        finally:
            connections.close_all()  # this thread's own connection

    reader = threading.Thread(target=read, name="audit-export-reader", daemon=True)
    reader.start()
    try:
        while (item := handoff.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
            del item
    finally:
        stop.set()
        reader.join()


_END = object()


def _psycopg3() -> bool:
    try:
        from django.db.backends.postgresql.psycopg_any import is_psycopg3
    except ImportError:  # pragma: no cover - a Django build without the PostgreSQL backend
        return False
    return is_psycopg3


@functools.cache
def _raw_json_loader() -> type:
    from psycopg.adapt import Loader

    class RawJSONLoader(Loader):
        """jsonb as its JSON text, unparsed."""

        def load(self, data: Any) -> RawJSON:
            return RawJSON(bytes(data).decode("utf-8"))

    return RawJSONLoader


def _fetch(queryset: QuerySet, raw_data: bool = False) -> list[tuple]:
    """One page of value tuples: through psycopg's C loaders on PostgreSQL, else through the ORM."""
    if connection.vendor != "postgresql" or not _psycopg3():
        return list(queryset)
    from psycopg.types.datetime import TimestamptzLoader
    from psycopg.types.string import TextLoader

    sql, params = queryset.query.sql_with_params()
    connection.ensure_connection()
    with connection.connection.cursor() as cursor:
        adapters = cursor.adapters
        adapters.register_loader("uuid", TextLoader)
        adapters.register_loader("timestamptz", TimestamptzLoader)
        adapters.register_loader("jsonb", TextLoader)
        if raw_data:
            adapters.register_loader("jsonb", _raw_json_loader())
        cursor.execute(sql, params)
        if raw_data:
            return cursor.fetchall()
        loads = json.loads
        return [(*row[:_DATA], loads(row[_DATA]), *row[_DATA + 1 :]) for row in cursor.fetchall()]


def as_row(values: tuple, organization_slug: str) -> dict[str, Any]:
    """A row dict, as `.values()` reads an event, plus `organization_slug`: what formatters take."""
    row = dict(zip(COLUMNS, values, strict=True))
    row["organization_slug"] = organization_slug
    return row


def iter_event_rows(*, organization: Organization, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """The organization's events as row dicts, in sequence order (arguments as `iter_value_pages`)."""
    slug = organization.slug
    for page in iter_value_pages(organization=organization, **kwargs):
        for values in page:
            yield as_row(values, slug)


@dataclass
class ExportStats:
    """What went out: rows, first and last sequence, bytes and their sha256 (filled in while streaming)."""

    row_count: int = 0
    first_sequence: int | None = None
    last_sequence: int | None = None
    byte_count: int = 0
    digest: Any = field(default_factory=hashlib.sha256)

    @property
    def sha256(self) -> str:
        """Hex sha256 of the bytes streamed so far."""
        return self.digest.hexdigest()


def iter_export_bytes(
    formatter: ModuleType,
    pages: Iterator[list[tuple]],
    *,
    organization_slug: str,
    stats: ExportStats | None = None,
) -> Iterator[bytes]:
    """Render pages of value tuples with a formatter module into UTF-8 chunks, updating `stats` as they go.

    A row dict lives only while its line is rendered, and a chunk holds at most RENDER_ROWS lines.
    """
    stats = stats if stats is not None else ExportStats()
    render = formatter.render
    render_values = getattr(formatter, "render_values", None)
    if not getattr(formatter, "RAW_DATA", False):
        pages = (_parsed(page) for page in pages)
    version = settings.AIRLOCK_VERSION
    head = formatter.header()
    if head:
        yield _counted(head.encode(), stats)
    for page in pages:
        if stats.first_sequence is None:
            stats.first_sequence = page[0][_SEQUENCE]
        for start in range(0, len(page), RENDER_ROWS):
            rows = page[start : start + RENDER_ROWS]
            if render_values is not None:
                lines = [render_values(values, organization_slug, version) for values in rows]
            else:
                lines = [render(as_row(values, organization_slug), version) for values in rows]
            chunk = "".join(lines).encode()
            del lines
            stats.row_count += len(rows)
            stats.last_sequence = rows[-1][_SEQUENCE]
            del rows
            yield _counted(chunk, stats)
        del page  # before the next page is fetched


def _parsed(page: list[tuple]) -> list[tuple]:
    """The page with any RawJSON `data` parsed, for formatters that read inside it."""
    if not page or not isinstance(page[0][_DATA], RawJSON):
        return page
    loads = json.loads
    return [(*row[:_DATA], loads(row[_DATA]), *row[_DATA + 1 :]) for row in page]


def _counted(chunk: bytes, stats: ExportStats) -> bytes:
    stats.digest.update(chunk)
    stats.byte_count += len(chunk)
    return chunk
