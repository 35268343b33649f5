"""Audit test helpers: a recorded chain of mixed events, tampering like a database superuser, the real CLI."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.cache import cache
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction

import audit.forwarding as forwarding
from audit import record
from audit.chain import GENESIS_HASH, chain_hash, event_document
from audit.context import bound
from audit.models import AuditChainHead, AuditEvent, AuditPendingEvent, Outcome
from audit.retention import PURGE_FUNCTION
from audit.services import AgentActor, SystemActor
from organizations.models import Organization
from tests.fakes.siem import SyslogReceiver

REPO_ROOT = Path(__file__).resolve().parents[2]
SESSION_ID = "5f1c7a52-7d65-4f1b-9a5e-2d0c9d1f0a11"


@pytest.fixture
def fast_forwarding(settings: Any) -> Iterator[None]:
    """Tiny backoff and debounce, short timeouts, no stale per-process cache between tests."""
    settings.AUDIT_FORWARDING_BACKOFF_BASE_SECONDS = 0.05
    settings.AUDIT_FORWARDING_BACKOFF_MAX_SECONDS = 0.2
    settings.AUDIT_FORWARDING_DEBOUNCE_SECONDS = 0.01
    settings.AUDIT_FORWARDING_TIMEOUT_SECONDS = 3
    forwarding.forget_destinations()
    yield
    forwarding.cancel_retries()
    forwarding.wait_until_idle(10)
    forwarding.forget_destinations()


@pytest.fixture
def syslog() -> Iterator[SyslogReceiver]:
    """An RFC 5424 syslog receiver over TCP on loopback (taken down after the test)."""
    receiver = SyslogReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def fresh_cache() -> Iterator[None]:
    """allauth keeps rate limits and used TOTP codes in the cache: a test must not inherit another's."""
    cache.clear()
    yield
    cache.clear()


def everything_stored() -> str:
    """Every audit row, chained and pending, as one text (to show that a secret is in none of them)."""
    rows = list(AuditEvent.objects.values()) + list(AuditPendingEvent.objects.values())
    return json.dumps(rows, default=str)


@contextmanager
def tampering() -> Iterator[None]:
    """Act as an attacker with database superuser rights: on PostgreSQL, switch the append-only trigger off."""
    if connection.vendor != "postgresql":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SET session_replication_role = DEFAULT")


def age_events(organization: Organization, through: int, days: int) -> None:
    """Make events up to #through look `days` old, re-hashing the chain from its anchor so that it still verifies.

    Test set-up only (it rewrites rows like a superuser would): a purge judges age by the database's clock, so
    events meant to have expired must really be old. Do it before signing a checkpoint, which it would invalidate.
    """
    head = AuditChainHead.objects.get(organization=organization)
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
    with tampering():
        prev = head.anchor_hash if head.anchor_sequence else GENESIS_HASH
        events = AuditEvent.objects.filter(organization=organization, sequence__gt=head.anchor_sequence)
        for event in events.order_by("sequence"):
            if event.sequence <= through:
                event.occurred_at = old + dt.timedelta(microseconds=event.sequence)
            event.prev_hash = prev
            event.hash = chain_hash(prev, event_document(event))
            AuditEvent.objects.filter(pk=event.pk).update(
                occurred_at=event.occurred_at, prev_hash=event.prev_hash, hash=event.hash
            )
            prev = event.hash
        AuditChainHead.objects.filter(organization=organization).update(hash=prev)


def record_mixed_chain(organization: Organization, user: object, count: int = 12) -> list[AuditEvent]:
    """Record `count` events the way the product does: user, agent and system actions, failures, rich data."""
    events = []
    with bound(request_id="req-1", source_ip="10.0.0.7", user_agent="pytest-browser", auth_method="session"):
        for index in range(count):
            kind = index % 4
            if kind == 0:
                event = record(
                    action="prompt.submitted",
                    actor=user,
                    organization=organization,
                    target=organization,
                    data={"chars": 40 + index},
                )
            elif kind == 1:
                event = record(
                    action="model.call",
                    actor=AgentActor(user=user, session_id=SESSION_ID),
                    organization=organization,
                    data={"model": "sim-model", "tokens": {"in": 120, "out": 33 + index}, "cost": 0.0012},
                )
            elif kind == 2:
                event = record(
                    action="workspace.command",
                    actor=AgentActor(user=user, session_id=SESSION_ID),
                    organization=organization,
                    outcome=Outcome.FAILURE,
                    error="exit status 2",
                    workspace_id=42,
                    data={"argv": ["pytest", "-q"], "exit": 2},
                )
            else:
                event = record(
                    action="provider.key_rotated",
                    actor=SystemActor("key-rotation"),
                    organization=organization,
                    data={"note": "scheduled rotation ✓", "previous": None},
                )
            events.append(event)
    return events


@dataclass(frozen=True)
class CliRun:
    """What a real `python manage.py ...` process did."""

    returncode: int
    stdout: str
    stderr: str


def _database_url() -> str:
    """A URL that points a child process at the database the tests are using right now."""
    db = settings.DATABASES["default"]
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture
def manage_py() -> object:
    """Run `python manage.py <args>` in a child process against the test database (needs committed data)."""

    def run(*args: str) -> CliRun:
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings.test", "DATABASE_URL": _database_url()}
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return CliRun(done.returncode, done.stdout, done.stderr)

    return run


@pytest.fixture
def runtime_role(db) -> str:
    """A plain role with the runtime grants (created in the test's transaction, so it goes with it)."""
    name = f"{connection.settings_dict['NAME']}_runtime"
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE ROLE {connection.ops.quote_name(name)} NOLOGIN")
    call_command("audit", "grants", "--role", name, stdout=StringIO())
    return name


@contextmanager
def acting_as(role: str) -> Iterator[None]:
    """Run the block with `role`'s rights on the test's connection."""
    with connection.cursor() as cursor:
        cursor.execute(f"SET ROLE {connection.ops.quote_name(role)}")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET ROLE")


def refused(block) -> str:
    """Run a write that must fail, in a savepoint so the test can go on; return the database's message."""
    with pytest.raises(DatabaseError) as caught, transaction.atomic():
        block()
    return str(caught.value)


def execute(sql: str, params: list | None = None) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def purge_directly(org, through: int) -> str:
    """Call the database function as a compromised process would, skipping the service; return its refusal."""
    return refused(lambda: execute(f"SELECT {PURGE_FUNCTION}(%s, %s)", [org.pk, through]))
