"""The embedded deployment (one daphne process, no broker) runs the audit log's scheduled jobs itself.

A SIEM backlog left by a process that stopped before delivering is sent as soon as the portal starts again,
with no new event to wake it, and the start-up writes the signed checkpoint the chain was missing.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import zlib
from pathlib import Path
from typing import Any

import pytest

import audit.forwarding as forwarding
from audit import record
from audit.forwarding.services import destination_create
from audit.models import AuditCheckpoint, AuditDestination, AuditEvent
from portal import scheduler
from portal.scheduler import due_order
from tests.fakes.siem import HttpReceiver, wait_for
from tests.livesrv import DAPHNE, ROOT, _database_url, daphne_url


def start_embedded_portal(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """daphne as `make run` starts it: inline runner, no broker, the embedded scheduler on."""
    log = tmp_path / "daphne.log"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "portal.settings.test",
        "DATABASE_URL": _database_url(),
        "AIRLOCK_AGENT_RUNNER": "inline",
        "AIRLOCK_EMBEDDED_SCHEDULER": "1",
        "REDIS_URL": "",
        "PYTHONUNBUFFERED": "1",
    }
    with log.open("w") as log_file:
        process = subprocess.Popen(DAPHNE, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        daphne_url(process, log)
    except BaseException:
        process.kill()
        process.wait(timeout=10)
        raise
    return process, log


def received_ids(receiver: HttpReceiver) -> list[str]:
    """Event ids in order of first arrival (what a receiver de-duplicating by id keeps)."""
    return list(dict.fromkeys(event["id"] for event in receiver.events))


def test_every_beat_entry_runs_first_at_start_up_then_at_its_interval() -> None:
    schedule = {
        "b": {"task": "x", "schedule": 5.0},
        "a": {"task": "y", "schedule": dt.timedelta(days=1)},
        "c": {"task": "z", "schedule": "0 3 * * *"},  # a crontab is beat's business: skipped, not a crash
    }
    heap = due_order(schedule, now=100.0)
    assert sorted(heap) == [(102.0, "a", 86400.0), (102.0, "b", 5.0)]


@pytest.mark.postgres
def test_a_job_another_process_is_running_is_skipped_here(transactional_db: None, org: Any, owner: Any) -> None:
    import psycopg

    record(action="prompt.submitted", actor=owner, organization=org, data={})
    key = (scheduler._LOCK_NAMESPACE << 32) | zlib.crc32(b"audit-write-checkpoints")
    with psycopg.connect(_database_url().replace("postgres://", "postgresql://", 1), autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", [key])  # another web process is writing checkpoints

        assert scheduler.run_entry("audit-write-checkpoints", "audit.write_checkpoints")
        assert not AuditCheckpoint.objects.filter(organization=org).exists()
        # Released here, not by closing: the server ends a closed session's backend (and its locks) a moment later.
        other.execute("SELECT pg_advisory_unlock(%s)", [key])

    assert scheduler.run_entry("audit-write-checkpoints", "audit.write_checkpoints")
    assert AuditCheckpoint.objects.filter(organization=org).exists()


@pytest.mark.timeout(90)
def test_restarted_embedded_portal_delivers_the_siem_backlog_and_signs_a_checkpoint(
    transactional_db: None, org: Any, owner: Any, webhook: HttpReceiver, settings: Any, tmp_path: Path
) -> None:
    # The process that wrote these stopped before delivering them: its wake-ups went to a broker nobody reads.
    settings.AUDIT_FORWARDING_RUNNER = "celery"
    forwarding.forget_destinations()
    destination = destination_create(
        actor=owner, organization=org, name="siem", kind="webhook", url=webhook.url, secret="whsec-restart-1234"
    )
    for index in range(5):
        record(action="prompt.submitted", actor=owner, organization=org, data={"n": index})
    assert not webhook.events
    destination.refresh_from_db()
    assert destination.delivered_sequence < AuditEvent.objects.filter(organization=org).count()
    assert not AuditCheckpoint.objects.filter(organization=org).exists()
    events = AuditEvent.objects.filter(organization=org).order_by("sequence")
    expected = [str(pk) for pk in events.values_list("id", flat=True)]

    process, log = start_embedded_portal(tmp_path)
    try:
        delivered = wait_for(lambda: received_ids(webhook)[: len(expected)] == expected, timeout=30)
        assert delivered, f"backlog not delivered after start-up:\n{log.read_text()[-3000:]}"
        last_sequence = AuditEvent.objects.get(pk=expected[-1]).sequence
        assert wait_for(lambda: AuditDestination.objects.get(pk=destination.pk).delivered_sequence >= last_sequence)
        assert wait_for(lambda: AuditCheckpoint.objects.filter(organization=org).exists(), timeout=30), log.read_text()
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
