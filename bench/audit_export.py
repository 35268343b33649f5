"""Benchmark: export an organization's audit log as JSON Lines, against a raw COPY of the same rows.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/airlock .venv/bin/python bench/audit_export.py [--events N]

Creates its own database (`<name>_bench_export`, dropped at the end unless --keep), migrates it, bulk-loads N
correctly chained synthetic events into one organization (hashes computed with `audit.chain`, so
`audit verify` passes; --verify checks it), then, in a fresh child process so that peak RSS is the export's
own, streams them through the exporter the API and CLI use (`audit.exporters`) to /dev/null. The baseline,
in the same run, is `COPY (SELECT <the same columns> ... ORDER BY sequence) TO STDOUT` read through psycopg.

Targets (issue 4): at least 50,000 rows/s and peak RSS growth under 100 MB.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET_ROWS_PER_SECOND = 50_000
TARGET_RSS_GROWTH_MB = 100
SLUG = "bench-export"


def _status_kb(field: str) -> int:
    """A field of /proc/self/status, in kB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _database_url(base: str, name: str) -> str:
    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def _setup_django(database_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ["DJANGO_SETTINGS_MODULE"] = "portal.settings.test"
    os.environ.setdefault("AIRLOCK_DATA_DIR", "/tmp/airlock-bench-export")
    import django

    django.setup()


# Loading ------------------------------------------------------------------------------------------------------


def _synthetic(index: int, session: str) -> dict:
    """The varying part of event number `index`: a realistic mix of actions and data sizes."""
    kind = index % 5
    if kind == 0:
        return {"action": "prompt.submitted", "data": {"text": f"Fix the failing test number {index} in billing.py"}}
    if kind == 1:
        return {
            "action": "model.call",
            "data": {
                "provider": "Local vLLM",
                "model": "qwen2.5-coder-32b",
                "input_tokens": 1200 + index % 700,
                "output_tokens": 80 + index % 300,
                "latency_ms": 900 + index % 400,
                "stop_reason": "tool_calls",
                "response_text": "I'll run the tests first to see what fails. " * 3,
                "tool_calls": [{"id": f"call_{index}", "name": "execute", "arguments": {"command": "pytest -q"}}],
            },
        }
    if kind == 2:
        return {"action": "tool.call", "data": {"tool": "execute", "arguments": {"command": "pytest -q"}}}
    if kind == 3:
        return {
            "action": "workspace.command",
            "data": {
                "command": "pytest -q",
                "cwd": f"/workspaces/{session}",
                "exit_code": index % 3,
                "duration_ms": 3100,
                "output_bytes": 5321,
                "output_sha256": "9f" * 32,
                "output_head": "....F.....\nFAILED tests/test_billing.py::test_rounding",
            },
        }
    return {"action": "auth.login", "data": {"method": "password"}}


def load_events(organization_id: int, count: int) -> tuple[int, str]:
    """COPY `count` chained events into the log and move the chain head; returns (head sequence, head hash)."""
    from django.db import connection

    from audit.chain import GENESIS_HASH, HASHED_FIELDS, chain_hash, event_document, normalize
    from audit.models import AuditChainHead

    columns = (*HASHED_FIELDS, "prev_hash", "hash")
    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    prev = GENESIS_HASH
    connection.ensure_connection()
    with connection.connection.cursor() as cursor:
        with cursor.copy(f"COPY audit_auditevent ({', '.join(columns)}) FROM STDIN") as copy:
            for sequence in range(1, count + 1):
                session = f"7d3f0c5e-0000-4000-8000-{sequence // 50:012d}"
                varying = _synthetic(sequence, session)
                event = {
                    "id": str(uuid.uuid4()),
                    "organization_id": organization_id,
                    "sequence": sequence,
                    "occurred_at": start + dt.timedelta(milliseconds=sequence * 7),
                    "action": varying["action"],
                    "outcome": "success" if sequence % 11 else "failure",
                    "error": "" if sequence % 11 else "exit status 1",
                    "actor_type": "agent" if varying["action"] != "auth.login" else "user",
                    "actor_id": "42",
                    "actor_display": f"agent acting for alice in session {session}",
                    "auth_method": "session",
                    "source_ip": "10.20.30.40",
                    "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
                    "request_id": uuid.uuid4().hex,
                    "target_type": "providers.languagemodel",
                    "target_id": "7",
                    "target_display": "qwen2.5-coder-32b",
                    "session_id": session,
                    "workspace_id": "13",
                    "model_call_id": "",
                    "data": normalize(varying["data"]),
                }
                event["prev_hash"] = prev
                event["hash"] = prev = chain_hash(prev, event_document(event))
                event["data"] = json.dumps(event["data"], ensure_ascii=False)
                copy.write_row([event[name] for name in columns])
    AuditChainHead.objects.update_or_create(organization_id=organization_id, defaults={"sequence": count, "hash": prev})
    return count, prev


# Measuring (in a child process) ----------------------------------------------------------------------------------


def measure(database_url: str) -> dict:
    """Export the organization as JSON Lines through the exporter, then COPY the same rows; numbers as a dict."""
    _setup_django(database_url)
    from django.db import connection

    from audit.exporters import FORMATS, ExportStats, iter_export_bytes, iter_value_pages
    from audit.exporters.stream import COLUMNS
    from organizations.models import Organization

    organization = Organization.objects.get(slug=SLUG)
    connection.ensure_connection()
    reset = _reset_peak()
    rss_before = _status_kb("VmRSS")
    stats = ExportStats()
    started = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        pages = iter_value_pages(organization=organization, raw_data=FORMATS["jsonl"].RAW_DATA)
        for chunk in iter_export_bytes(FORMATS["jsonl"], pages, organization_slug=organization.slug, stats=stats):
            sink.write(chunk)
    export_seconds = time.perf_counter() - started
    peak = _status_kb("VmHWM")

    select = (
        f"SELECT {', '.join(COLUMNS)} FROM audit_auditevent WHERE organization_id = {int(organization.pk)} "
        "ORDER BY sequence"
    )
    copied = 0
    started = time.perf_counter()
    with connection.connection.cursor() as cursor:
        with cursor.copy(f"COPY ({select}) TO STDOUT") as copy:
            for block in copy:
                copied += len(block)
    copy_seconds = time.perf_counter() - started
    return {
        "rows": stats.row_count,
        "export_seconds": export_seconds,
        "export_bytes": stats.byte_count,
        "copy_seconds": copy_seconds,
        "copy_bytes": copied,
        "rss_before_mb": rss_before / 1024,
        "peak_growth_mb": (peak - rss_before) / 1024,
        "peak_reset": reset,
    }


def main() -> int:
    """Set up the database and events, run the measurement in a child process, print the report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="events to load (default 1,000,000)")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database afterwards")
    parser.add_argument("--reuse", action="store_true", help="reuse a kept database with the same number of events")
    parser.add_argument("--verify", action="store_true", help="also run audit verify over the loaded chain")
    parser.add_argument("--measure", metavar="DATABASE_URL", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.measure:
        print(json.dumps(measure(args.measure)))
        return 0

    base = os.environ.get("DATABASE_URL", "")
    if not base.startswith(("postgres://", "postgresql://")):
        print("Set DATABASE_URL to a PostgreSQL server (postgres://user@host:5432/db).", file=sys.stderr)
        return 2
    import psycopg

    name = (urlsplit(base).path.lstrip("/") or "airlock") + "_bench_export"
    bench_url = _database_url(base, name)
    with psycopg.connect(_database_url(base, "postgres"), autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None
        if exists and not args.reuse:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        if not exists or not args.reuse:
            admin.execute(f'CREATE DATABASE "{name}"')
            args.reuse = False

    _setup_django(bench_url)
    from django.core.management import call_command

    from organizations.models import Organization

    if not args.reuse:
        started = time.perf_counter()
        call_command("migrate", verbosity=0)
        organization = Organization.objects.create(slug=SLUG, name="Bench export")
        load_events(organization.pk, args.events)
        print(f"loaded {args.events:,} chained events in {time.perf_counter() - started:.1f} s (incl. migrate)")
    organization = Organization.objects.get(slug=SLUG)
    if args.verify:
        from audit.verify import verify_chain

        started = time.perf_counter()
        result = verify_chain(organization=organization)
        print(f"verify: ok={result.ok} {result.events_checked:,} events in {time.perf_counter() - started:.1f} s")

    from django.db import connections

    connections.close_all()
    child = subprocess.run(
        [sys.executable, __file__, "--measure", bench_url], capture_output=True, text=True, check=False, cwd=ROOT
    )
    if child.returncode != 0:
        print(child.stderr, file=sys.stderr)
        return 1
    numbers = json.loads(child.stdout.strip().splitlines()[-1])

    if not args.keep:
        with psycopg.connect(_database_url(base, "postgres"), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')

    rows = numbers["rows"]
    export_rate = rows / numbers["export_seconds"]
    copy_rate = rows / numbers["copy_seconds"]
    growth = numbers["peak_growth_mb"]
    print(f"events exported:      {rows:,} ({numbers['export_bytes'] / 1e6:,.0f} MB of JSON Lines)")
    print(f"export (JSON Lines):  {numbers['export_seconds']:.2f} s, {export_rate:,.0f} rows/s")
    print(f"baseline (raw COPY):  {numbers['copy_seconds']:.2f} s, {copy_rate:,.0f} rows/s")
    print(f"ratio export/COPY:    {export_rate / copy_rate:.2f}")
    note = "" if numbers["peak_reset"] else " (VmHWM could not be reset: an upper bound)"
    print(f"peak RSS growth:      {growth:.1f} MB over {numbers['rss_before_mb']:.0f} MB at start{note}")
    ok_rate = export_rate >= TARGET_ROWS_PER_SECOND
    ok_rss = growth < TARGET_RSS_GROWTH_MB
    print(f"target >= {TARGET_ROWS_PER_SECOND:,} rows/s: {'PASS' if ok_rate else 'FAIL'}")
    print(f"target RSS growth < {TARGET_RSS_GROWTH_MB} MB: {'PASS' if ok_rss else 'FAIL'}")
    return 0 if ok_rate and ok_rss else 1


if __name__ == "__main__":
    sys.exit(main())
