"""Batched chaining (AUDIT_CHAINING="batched"): record() writes pending rows, the chainer moves them into the chain."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import connection, transaction
from rest_framework.test import APIClient

from audit import chaining, record
from audit.chain import GENESIS_HASH
from audit.checkpoints import checkpoint_write, organizations_needing_checkpoint
from audit.export_services import export_params_parse, export_to_file
from audit.forwarding.selectors import destinations_for_user
from audit.models import AuditChainHead, AuditDestination, AuditEvent, AuditPendingEvent, AuditSettings, DestinationKind
from audit.retention import audit_purge
from audit.services import SystemActor
from audit.verify import verify_chain
from organizations.models import Organization
from tests.audit.conftest import age_events
from tests.factories import OrganizationFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

REPO = Path(__file__).resolve().parents[2]


class CallerFailed(Exception):
    """The audited action failed after its event was recorded."""


@pytest.fixture(autouse=True)
def batched(settings) -> Iterator[None]:
    """Batched mode; no chainer thread outlives the test (the database is emptied after it)."""
    settings.AUDIT_CHAINING = "batched"
    yield
    assert chaining.wait_until_chained(30), "a chainer thread hung"


def actions(organization: Organization) -> list[tuple[int, str]]:
    """The organization's chained events as (sequence, action), in order."""
    return list(AuditEvent.objects.filter(organization=organization).values_list("sequence", "action"))


def test_record_returns_a_pending_event_that_is_chained_after_commit(org):
    pending = record(action="org.created", actor=SystemActor(), organization=org, data={"n": 1})

    assert isinstance(pending, AuditPendingEvent)
    assert not hasattr(pending, "sequence")
    assert chaining.wait_until_chained(10)
    event = AuditEvent.objects.get(pk=pending.event_id)
    assert (event.sequence, event.prev_hash, event.action, event.data) == (1, GENESIS_HASH, "org.created", {"n": 1})
    assert event.occurred_at == pending.occurred_at
    assert not AuditPendingEvent.objects.exists()
    head = AuditChainHead.objects.get(organization=org)
    assert (head.sequence, head.hash) == (1, event.hash)


def test_events_are_chained_in_commit_order_and_the_chain_verifies(org, other_org):
    for index in range(5):
        record(action=f"step.{index}", actor=SystemActor(), organization=org, data={"index": index})
        record(action=f"other.{index}", actor=SystemActor(), organization=other_org)
    assert chaining.wait_until_chained(10)

    assert actions(org) == [(index + 1, f"step.{index}") for index in range(5)]
    assert actions(other_org) == [(index + 1, f"other.{index}") for index in range(5)]
    for organization in (org, other_org):
        result = verify_chain(organization=organization)
        assert (result.ok, result.events_checked, result.head_sequence) == (True, 5, 5), result.reason


def test_a_rolled_back_caller_leaves_no_pending_row_and_no_event(org):
    with pytest.raises(CallerFailed), transaction.atomic():
        record(action="provider.created", actor=SystemActor(), organization=org, data={"name": "lost"})
        raise CallerFailed

    assert chaining.wait_until_chained(10)
    assert not AuditPendingEvent.objects.exists()
    assert not AuditEvent.objects.exists()
    record(action="provider.created", actor=SystemActor(), organization=org, data={"name": "kept"})
    assert chaining.wait_until_chained(10)
    assert actions(org) == [(1, "provider.created")]
    assert verify_chain(organization=org).ok


def test_the_chainer_and_the_sweep_chain_what_no_wake_up_reached(org, other_org, settings):
    settings.AUDIT_CHAINER = "process"  # writers wake nothing
    for index in range(7):
        record(action=f"step.{index}", actor=SystemActor(), organization=org)
    record(action="elsewhere", actor=SystemActor(), organization=other_org)
    assert AuditPendingEvent.objects.count() == 8

    assert chaining.chain_pending(org.pk, limit=3) == 7  # three transactions: 3 + 3 + 1
    assert chaining.chain_all_pending() == 1

    assert actions(org) == [(index + 1, f"step.{index}") for index in range(7)]
    assert actions(other_org) == [(1, "elsewhere")]
    assert not AuditPendingEvent.objects.exists()
    assert verify_chain(organization=org).ok


def test_immediate_and_batched_writers_share_one_chain(org, settings):
    record(action="batched.first", actor=SystemActor(), organization=org)
    assert chaining.wait_until_chained(10)
    settings.AUDIT_CHAINING = "immediate"
    second = record(action="immediate.second", actor=SystemActor(), organization=org)
    settings.AUDIT_CHAINING = "batched"
    record(action="batched.third", actor=SystemActor(), organization=org)
    assert chaining.wait_until_chained(10)

    assert second.sequence == 2
    assert actions(org) == [(1, "batched.first"), (2, "immediate.second"), (3, "batched.third")]
    assert verify_chain(organization=org).ok


@pytest.fixture
def left_pending(org, settings) -> list[AuditPendingEvent]:
    """Three committed events still pending: a chainer process is said to run, so no thread chains them."""
    settings.AUDIT_CHAINER = "process"
    pending = [record(action=f"before.{number}", actor=SystemActor(), organization=org) for number in range(3)]
    assert AuditPendingEvent.objects.count() == 3
    return pending


def test_a_streamed_export_holds_every_event_committed_before_it(org, owner, left_pending):
    client = APIClient()
    client.force_authenticate(owner)

    response = client.get("/api/v1/orgs/acme/audit/export", {"format": "jsonl"})

    lines = b"".join(response.streaming_content).decode().splitlines()
    assert [json.loads(line)["action"] for line in lines] == ["before.0", "before.1", "before.2"]
    assert actions(org) == [(1, "before.0"), (2, "before.1"), (3, "before.2"), (4, "audit.exported")]


def test_a_file_export_and_its_manifest_cover_every_event_committed_before_it(org, left_pending, tmp_path):
    result = export_to_file(
        actor=SystemActor("cli:test"),
        organization=org,
        params=export_params_parse(format="jsonl"),
        path=tmp_path / "acme.jsonl",
    )

    assert result.stats.row_count == 3
    assert (result.manifest["head_sequence"], result.manifest["last_sequence"]) == (3, 3)
    assert len((tmp_path / "acme.jsonl").read_text().splitlines()) == 3


def test_a_checkpoint_signs_every_event_committed_before_it_and_is_announced_right_after(org, left_pending):
    checkpoint = checkpoint_write(organization=org)

    assert checkpoint.sequence == 3
    assert actions(org)[-1] == (4, "audit.checkpoint")
    assert list(organizations_needing_checkpoint()) == []  # the head moved only by its own announcement


def test_a_management_command_chains_its_events_before_the_process_exits(manage_py, monkeypatch, db):
    UserFactory(username="wendy")
    monkeypatch.setenv("AIRLOCK_AUDIT_CHAINING", "batched")
    monkeypatch.setenv("AIRLOCK_AUDIT_CHAINER", "thread")

    run = manage_py("orgs", "create", "initech", "--name", "Initech", "--owner", "wendy")

    assert run.returncode == 0, run.stderr
    assert not AuditPendingEvent.objects.exists()  # no sweep runs: the exiting command chained them
    initech = Organization.objects.get(slug="initech")
    assert [action for _sequence, action in actions(initech)][:1] == ["org.created"]
    assert verify_chain(organization=initech).ok


def test_a_purge_and_a_purge_skipped_by_legal_hold_report_the_sequence_of_their_event(org, owner):
    for number in range(4):
        record(action=f"old.{number}", actor=SystemActor(), organization=org)
    assert chaining.wait_until_chained(10)
    AuditSettings.objects.create(organization=org, retention_days=30, legal_hold=True, legal_hold_reason="case 7")

    skipped = audit_purge(organization=org, actor=owner)

    assert skipped.skipped and skipped.event_sequence == 5
    AuditSettings.objects.filter(organization=org).update(legal_hold=False)
    age_events(org, through=5, days=31)  # everything but the newest event, which a purge never removes anyway
    purged = audit_purge(organization=org, actor=owner)

    assert (purged.purged, purged.event_sequence) == (4, 6)
    assert AuditEvent.objects.get(organization=org, sequence=6).action == "audit.purged"
    assert verify_chain(organization=org).ok


def test_verify_reports_pending_rows_older_than_the_bound_but_not_fresh_ones(org, settings):
    settings.AUDIT_PENDING_STALE_SECONDS = 60
    record(action="chained", actor=SystemActor(), organization=org)
    assert chaining.wait_until_chained(10)
    settings.AUDIT_CHAINER = "process"  # writers wake nothing: as if no chainer ran
    pending = record(action="stuck", actor=SystemActor(), organization=org)

    fresh = verify_chain(organization=org)
    assert (fresh.ok, fresh.events_checked) == (True, 1), fresh.reason

    AuditPendingEvent.objects.filter(pk=pending.pk).update(
        occurred_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=125)
    )
    stale = verify_chain(organization=org)
    assert not stale.ok
    assert stale.first_bad_sequence == 2
    assert stale.reason.startswith("1 events written but not chained for 12")
    assert stale.reason.endswith(" s: is the chainer running?")

    assert chaining.chain_pending(org.pk) == 1
    result = verify_chain(organization=org)
    assert (result.ok, result.events_checked) == (True, 2), result.reason


@pytest.mark.postgres
def test_an_event_committed_later_is_chained_later_even_if_inserted_first(org):
    inserted, release = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def slow_caller() -> None:
        try:
            with transaction.atomic():
                record(action="inserted.first", actor=SystemActor(), organization=org)
                inserted.set()
                assert release.wait(30)
        except BaseException as exc:
            failures.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=slow_caller)
    thread.start()
    assert inserted.wait(30)
    record(action="committed.first", actor=SystemActor(), organization=org)
    assert chaining.wait_until_chained(10)
    release.set()
    thread.join(30)
    assert chaining.wait_until_chained(10)

    assert not failures, failures
    assert actions(org) == [(1, "committed.first"), (2, "inserted.first")]
    assert verify_chain(organization=org).ok


@pytest.mark.postgres
@pytest.mark.parametrize("organization_count", [1, 4])
def test_concurrent_writers_produce_a_gapless_chain_with_every_event_once(db, organization_count):
    organizations = [OrganizationFactory(slug=f"tenant-{n}") for n in range(organization_count)]
    writers, per_writer = 8, 50
    start = threading.Barrier(writers)
    written: list[str] = []
    failures: list[BaseException] = []

    def write(writer: int, organization: Organization) -> None:
        try:
            start.wait(timeout=30)
            for index in range(per_writer):
                pending = record(
                    action="tool.call",
                    actor=SystemActor(f"writer-{writer}"),
                    organization=organization,
                    data={"writer": writer, "index": index},
                )
                written.append(str(pending.event_id))
        except BaseException as exc:
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=write, args=(n, organizations[n % organization_count])) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert not failures, failures
    assert chaining.wait_until_chained(30)
    for organization in organizations:  # a wake-up may have lost the race to a chainer's last read
        chaining.chain_pending(organization.pk, wait=True)

    assert not AuditPendingEvent.objects.exists()
    chained = list(AuditEvent.objects.values_list("id", flat=True))
    assert sorted(str(event_id) for event_id in chained) == sorted(written)  # every event exactly once
    per_org = writers * per_writer // organization_count
    for organization in organizations:
        sequences = list(AuditEvent.objects.filter(organization=organization).values_list("sequence", flat=True))
        assert sequences == list(range(1, per_org + 1))
        result = verify_chain(organization=organization)
        assert (result.ok, result.events_checked) == (True, per_org), result.reason
    for writer in range(writers):  # each writer's events keep the order it committed them in
        indexes = list(
            AuditEvent.objects.filter(data__writer=writer).order_by("sequence").values_list("data__index", flat=True)
        )
        assert indexes == list(range(per_writer))


def test_an_unknown_chaining_mode_is_refused_naming_the_variable():
    env = {**os.environ, "AIRLOCK_AUDIT_CHAINING": "eventually", "DJANGO_SETTINGS_MODULE": "portal.settings.test"}
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode != 0
    assert "ImproperlyConfigured: AIRLOCK_AUDIT_CHAINING='eventually'" in result.stderr


def test_the_dedicated_chainer_process_chains_what_writers_only_inserted(org, other_org, settings):
    settings.AUDIT_CHAINER = "process"
    from tests.livesrv import _database_url

    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings.test", "DATABASE_URL": _database_url()}
    env |= {"AIRLOCK_AUDIT_CHAINING": "batched", "AIRLOCK_AUDIT_CHAINER": "process"}
    chainer = subprocess.Popen(
        [sys.executable, "manage.py", "audit", "chainer", "--idle-seconds", "0.02"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert "running" in (chainer.stdout.readline() if chainer.stdout else "")  # its first line on stdout
        for index in range(12):
            record(action="prompt.submitted", actor=SystemActor(), organization=(org, other_org)[index % 2], data={})
        assert not chaining.chainer_threads_running(), "writers start no chainer thread when a chainer process runs"

        deadline = time.monotonic() + 20
        while AuditEvent.objects.count() < 12 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert actions(org) == [(n, "prompt.submitted") for n in range(1, 7)]
        assert actions(other_org) == [(n, "prompt.submitted") for n in range(1, 7)]
        assert not AuditPendingEvent.objects.exists()
        assert verify_chain(organization=org).ok and verify_chain(organization=other_org).ok
    finally:
        chainer.terminate()
        output, _ = chainer.communicate(timeout=20)
    assert chainer.returncode == 0, output
    assert "stopped after chaining 12 events" in output


def test_an_unknown_chainer_kind_is_refused_naming_the_variable():
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=REPO,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings.test", "AIRLOCK_AUDIT_CHAINER": "celery"},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "AIRLOCK_AUDIT_CHAINER='celery'" in result.stderr


@pytest.mark.postgres
def test_one_round_chains_every_organization_but_leaves_a_locked_one_to_its_chainer(org, other_org, settings):
    import psycopg

    from tests.livesrv import _database_url

    settings.AUDIT_CHAINER = "process"  # writers only insert
    for organization in (org, other_org, org):
        record(action="prompt.submitted", actor=SystemActor(), organization=organization)
    key = (chaining._LOCK_NAMESPACE << 32) | other_org.pk
    with psycopg.connect(_database_url().replace("postgres://", "postgresql://", 1), autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [key])  # another chainer is working on other_org

        assert chaining.chain_every_organization() == 2
        assert actions(org) == [(1, "prompt.submitted"), (2, "prompt.submitted")]
        assert actions(other_org) == []

        holder.execute("SELECT pg_advisory_unlock(%s)", [key])
    assert chaining.chain_every_organization() == 1
    assert actions(other_org) == [(1, "prompt.submitted")]
    assert not AuditPendingEvent.objects.exists()
    assert verify_chain(organization=org).ok and verify_chain(organization=other_org).ok


@pytest.mark.postgres
def test_one_organizations_broken_chain_does_not_hold_back_the_others(org, other_org, settings):
    settings.AUDIT_CHAINER = "process"
    record(action="prompt.submitted", actor=SystemActor(), organization=org)
    assert chaining.chain_every_organization() == 1
    # Someone rewound org's head: its next event would take a sequence number that is already in the chain.
    AuditChainHead.objects.filter(organization=org).update(sequence=0, hash=GENESIS_HASH)
    for organization in (org, other_org):
        record(action="prompt.submitted", actor=SystemActor(), organization=organization)

    assert chaining.chain_every_organization() == 1

    assert actions(other_org) == [(1, "prompt.submitted")]
    assert AuditPendingEvent.objects.filter(organization=org).count() == 1  # waits for an operator, not lost


def test_a_destinations_lag_counts_events_not_yet_chained(org, owner, settings):
    settings.AUDIT_CHAINER = "process"  # said to run, but does not: the events stay pending
    destination = AuditDestination.objects.create(
        organization=org, name="siem", kind=DestinationKind.SYSLOG, host="siem", port=514
    )
    for number in range(3):
        record(action=f"waiting.{number}", actor=SystemActor(), organization=org)

    [listed] = destinations_for_user(user=owner, organization=org)

    assert (listed.pk, listed.lag) == (destination.pk, 3)


def test_chaining_inside_a_callers_transaction_wakes_forwarding_only_after_its_commit(org, left_pending, monkeypatch):
    woken = []
    monkeypatch.setattr(chaining, "schedule_forwarding", woken.append)

    with transaction.atomic():
        chaining.chain_committed(org.pk)
        assert woken == []  # forwarding would read before the chained events are visible

    assert woken == [org.pk]
    assert [action for _sequence, action in actions(org)] == ["before.0", "before.1", "before.2"]
