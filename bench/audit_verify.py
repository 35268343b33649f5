"""Benchmark: `verify_chain` over 1,000,000 events (target: under 30 s), against reading the same rows unhashed.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/airlock .venv/bin/python bench/audit_verify.py [--events N]

Runs in a database of its own (`airlock_bench`, or AIRLOCK_BENCH_DB), created and migrated by the script. The
chain is built quickly: rows and hashes precomputed with `audit.chain` (the real hashing rule) and loaded with
COPY into the real event table, then the head row is set; a chain of the right length from an earlier run is
reused (`--rebuild` to build it again). Baselines, in the same run: `SELECT count(*)` of the organization's
events, and streaming every row the way verification reads them, without hashing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET_SECONDS = 30.0
SLUG = "bench-verify"


def bench_database_url() -> str:
    """DATABASE_URL pointed at the benchmark's own database, created if missing."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        sys.exit("Set DATABASE_URL to a PostgreSQL server, e.g. postgres://postgres@127.0.0.1:5432/airlock")
    name = os.environ.get("AIRLOCK_BENCH_DB", "airlock_bench")
    parts = urlsplit(url)
    import psycopg

    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(parts._replace(path=f"/{name}"))


def setup_django() -> None:
    """Settings for the benchmark database; migrate it."""
    os.environ["DATABASE_URL"] = bench_database_url()
    os.environ["DJANGO_SETTINGS_MODULE"] = "portal.settings.test"
    os.environ.setdefault("AIRLOCK_DATA_DIR", "/tmp/airlock-bench")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def build_chain(organization_id: int, count: int) -> float:
    """Precompute `count` chained events and COPY them in; returns the seconds taken."""
    from django.db import connection, transaction

    from audit.chain import GENESIS_HASH, HASHED_FIELDS, canonical_json, chain_hash, event_document
    from audit.models import AuditChainHead

    began = time.perf_counter()
    columns = (*HASHED_FIELDS, "prev_hash", "hash")
    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    session = str(uuid.uuid4())
    prev = GENESIS_HASH
    with transaction.atomic():
        with connection.cursor() as cursor:
            # Only on this benchmark database: remove an earlier chain of the bench organization.
            cursor.execute("DELETE FROM audit_auditchainhead WHERE organization_id = %s", [organization_id])
            cursor.execute("SET LOCAL session_replication_role = replica")  # bench set-up: bypass the trigger
            cursor.execute("DELETE FROM audit_auditevent WHERE organization_id = %s", [organization_id])
            cursor.execute("SET LOCAL session_replication_role = DEFAULT")
            copy_sql = f"COPY audit_auditevent ({', '.join(columns)}) FROM STDIN"
            with cursor.cursor.copy(copy_sql) as copy:
                for sequence in range(1, count + 1):
                    kind = sequence % 3
                    row = {
                        "id": str(uuid.uuid4()),
                        "organization_id": organization_id,
                        "sequence": sequence,
                        "occurred_at": start + dt.timedelta(milliseconds=sequence),
                        "action": ("prompt.submitted", "model.call", "workspace.command")[kind],
                        "outcome": "success" if kind else "failure",
                        "error": "" if kind else "exit status 1",
                        "actor_type": "agent",
                        "actor_id": "1",
                        "actor_display": f"agent acting for alice in session {session}",
                        "auth_method": "",
                        "source_ip": "10.0.0.7",
                        "user_agent": "bench",
                        "request_id": f"req-{sequence}",
                        "target_type": "",
                        "target_id": "",
                        "target_display": "",
                        "session_id": session,
                        "workspace_id": "42" if kind == 2 else "",
                        "model_call_id": str(sequence) if kind == 1 else "",
                        "data": {"model": "sim-model", "tokens": {"in": 1200, "out": sequence % 500}, "cost": 0.0012},
                    }
                    digest = chain_hash(prev, event_document(row))
                    values = [row[name] for name in HASHED_FIELDS]
                    values[HASHED_FIELDS.index("data")] = canonical_json(row["data"])
                    copy.write_row([*values, prev, digest])
                    prev = digest
        AuditChainHead.objects.create(organization_id=organization_id, sequence=count, hash=prev)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE audit_auditevent")
    return time.perf_counter() - began


def time_it(label: str, function) -> float:
    """Run once, print and return the seconds."""
    began = time.perf_counter()
    outcome = function()
    seconds = time.perf_counter() - began
    print(f"{label:42s} {seconds:7.2f} s   {outcome}", flush=True)
    return seconds


def main() -> None:
    """Build (or reuse) the chain, time the baselines and verification, print the ratios and the verdict."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="chain length (default 1,000,000)")
    parser.add_argument("--rebuild", action="store_true", help="build the chain even if one of that length exists")
    parser.add_argument("--workers", type=int, default=None, help="verification processes (default: one per CPU)")
    args = parser.parse_args()
    setup_django()

    from django.db import connection

    from audit.models import AuditChainHead, AuditEvent
    from audit.verify import _COLUMNS, _rows
    from organizations.models import Organization

    organization, _ = Organization.objects.get_or_create(slug=SLUG, defaults={"name": "Bench verify"})
    head = AuditChainHead.objects.filter(organization=organization).first()
    if args.rebuild or head is None or head.sequence != args.events:
        seconds = build_chain(organization.pk, args.events)
        print(f"built {args.events:,} chained events with COPY in {seconds:.1f} s", flush=True)
    else:
        print(f"reusing the chain of {args.events:,} events built by an earlier run", flush=True)

    events = AuditEvent.objects.filter(organization=organization)

    def count() -> str:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM audit_auditevent WHERE organization_id = %s", [organization.pk])
            return f"{cursor.fetchone()[0]:,} rows"

    def read_all() -> str:
        rows = sum(1 for _ in _rows(events.order_by("sequence").values_list(*_COLUMNS)))
        return f"{rows:,} rows read, not hashed"

    def verify() -> str:
        from audit.verify import verify_chain

        result = verify_chain(organization=organization, workers=args.workers)
        if not result.ok:
            sys.exit(f"verification failed: {result.reason}")
        return f"{result.events_checked:,} events verified"

    def verify_one_pass() -> str:
        from audit.verify import verify_chain

        result = verify_chain(organization=organization, workers=1)
        return f"{result.events_checked:,} events verified"

    time_it("baseline: SELECT count(*)", count)
    read = time_it("baseline: stream rows (one process, no hash)", read_all)
    one = time_it("verify_chain, one process", verify_one_pass)
    full = time_it(f"verify_chain, default workers ({os.cpu_count()} CPUs)", verify)
    print()
    print(f"verify_chain: {full:.2f} s for {args.events:,} events ({args.events / full:,.0f} events/s)")
    print(f"ratio verify / stream rows: {full / read:.2f}; one process / stream rows: {one / read:.2f}")
    print(f"target < {TARGET_SECONDS:.0f} s: {'met' if full < TARGET_SECONDS else 'NOT met'}")


if __name__ == "__main__":
    main()
