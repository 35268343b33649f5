"""Outside a transaction, PostgreSQL exports read the next page in a reader thread: same bytes, nothing left behind."""

from __future__ import annotations

import json
import threading

import pytest
from django.db import transaction

from audit.chain import format_time
from audit.exporters import FORMATS, iter_export_bytes, iter_value_pages, stream
from audit.models import AuditEvent
from tests.audit.conftest import record_mixed_chain

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def export_bytes(org, export_format: str, **kwargs: object) -> bytes:
    module = FORMATS[export_format]
    pages = iter_value_pages(organization=org, raw_data=getattr(module, "RAW_DATA", False), page_size=4, **kwargs)
    return b"".join(iter_export_bytes(module, pages, organization_slug=org.slug))


def readers_alive() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "audit-export-reader" and thread.is_alive()]


@pytest.fixture
def chain(org, agents_user) -> None:
    """Fifteen mixed events: four pages of four."""
    record_mixed_chain(org, agents_user, count=15)


@pytest.mark.parametrize("export_format", sorted(FORMATS))
def test_read_ahead_export_is_the_same_bytes_as_one_read_in_a_transaction(org, chain, export_format, monkeypatch):
    readers = []
    read_ahead_pages = stream._read_ahead

    def counted(*args):
        readers.append(threading.current_thread().name)
        yield from read_ahead_pages(*args)

    monkeypatch.setattr(stream, "_read_ahead", counted)
    read_ahead = export_bytes(org, export_format)
    with transaction.atomic():  # one connection, page after page
        in_transaction = export_bytes(org, export_format)

    assert len(readers) == 1  # only the export outside the transaction read ahead
    assert read_ahead == in_transaction
    assert not readers_alive()


def test_json_lines_times_written_by_the_database_are_the_hashed_text(org, chain):
    lines = [json.loads(line) for line in export_bytes(org, "jsonl").splitlines()]
    stored = dict(AuditEvent.objects.filter(organization=org).values_list("sequence", "occurred_at"))

    assert [line["occurred_at"] for line in lines] == [format_time(stored[line["sequence"]]) for line in lines]
    assert len(lines) == 15


def test_a_consumer_that_stops_early_stops_the_reader(org, chain, monkeypatch):
    fetch, fetched_in = stream._fetch, []

    def recording_fetch(queryset, raw_data=False):
        fetched_in.append(threading.current_thread().name)
        return fetch(queryset, raw_data)

    monkeypatch.setattr(stream, "_fetch", recording_fetch)
    pages = iter_value_pages(organization=org, page_size=4)

    first = next(pages)
    pages.close()  # a client that went away

    assert [row[2] for row in first] == [1, 2, 3, 4]
    assert fetched_in and set(fetched_in) == {"audit-export-reader"}  # the pages came from the reader
    assert not readers_alive()


def test_an_error_in_the_reader_is_raised_to_the_consumer(org, chain, monkeypatch):
    fetch = stream._fetch
    calls = []

    def failing_fetch(queryset, raw_data=False):
        calls.append(threading.current_thread().name)
        if len(calls) == 2:
            raise RuntimeError("the database went away")
        return fetch(queryset, raw_data)

    monkeypatch.setattr(stream, "_fetch", failing_fetch)
    pages = iter_value_pages(organization=org, page_size=4)

    assert len(next(pages)) == 4
    with pytest.raises(RuntimeError, match="the database went away"):
        next(pages)
    assert calls[1] == "audit-export-reader"  # raised in the reader, received by the consumer
    assert not readers_alive()
