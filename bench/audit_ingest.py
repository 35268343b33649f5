"""Benchmark: hash-chained `audit.record()` events per second with 8 concurrent writers, against plain INSERTs.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/airlock .venv/bin/python bench/audit_ingest.py \
        [--events N] [--repeat N] [--chaining immediate|batched|both] [--chainer process|thread]

Runs in a database of its own (`airlock_bench`, or AIRLOCK_BENCH_DB), created and migrated by the script; its
audit tables are emptied at the start. Each run has 8 writer processes (fresh connections, no GIL):

- record(), all 8 writers in one organization, for each chaining mode asked for (default: both);
- record(), 8 organizations, one writer each, likewise;
- plain INSERTs of the same rows (one INSERT per transaction, same columns and indexes, no chain) in one
  organization and in 8.

Immediate chaining: writers queue on the organization's chain head; the figure is events appended (and
committed) per second. Batched chaining (AUDIT_CHAINING=batched): writers commit pending rows and a chainer
moves them into the chain; the clock stops only when no event is left pending, so the figure is events durably
recorded AND chained per second. Where the chainer runs (`--chainer`, AUDIT_CHAINER):
- `process` (default): one dedicated `manage.py audit chainer` process, started by this script;
- `thread`: a chainer thread in each writer process (the writers wait for theirs, then the script drains
  whatever is left).

Targets (issue 4): at least 5,000 events/s per organization, and at least half the plain-INSERT rate. Every
run is repeated (`--repeat`, 3) and the medians are reported, ratios taken within each repetition: single
runs on this machine spread by 20% or more.
`--profile` adds a cProfile of record() in one process (where the time goes per event).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import multiprocessing
import os
import pstats
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WRITERS = 8
TARGET_PER_ORG = 5000.0
TARGET_RATIO = 0.5
PLAIN_TABLE = "bench_plain_auditevent"


def bench_database_url() -> str:
    """DATABASE_URL pointed at the benchmark's own database, created if missing."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        sys.exit("Set DATABASE_URL to a PostgreSQL server, e.g. postgres://postgres@127.0.0.1:5432/airlock")
    name = os.environ.get("AIRLOCK_BENCH_DB", "airlock_bench")
    parts = urlsplit(url)
    import psycopg

    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
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


def reset(org_count: int) -> list[int]:
    """Empty the audit tables (TRUNCATE is not refused by the append-only trigger) and return the bench orgs' ids."""
    from django.db import connection

    from organizations.models import Organization

    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE audit_auditevent, audit_auditpendingevent, audit_auditchainhead, audit_auditcheckpoint"
        )
        cursor.execute(f"DROP TABLE IF EXISTS {PLAIN_TABLE}")
        # Same columns and indexes as the event table; no trigger, no foreign keys, no chain.
        cursor.execute(f"CREATE TABLE {PLAIN_TABLE} (LIKE audit_auditevent INCLUDING ALL)")
        # Every run starts right after a checkpoint, so that each pays the same full-page writes on its first
        # touch of a page; otherwise whichever run a timed checkpoint lands in looks slower.
        cursor.execute("CHECKPOINT")
    ids = []
    for index in range(org_count):
        org, _ = Organization.objects.get_or_create(slug=f"bench-ingest-{index}", defaults={"name": f"Bench {index}"})
        ids.append(org.pk)
    return ids


def event_data(index: int) -> dict:
    """A typical model.call payload."""
    return {
        "provider": "sim",
        "model": "sim-model",
        "tokens": {"in": 1200 + index % 97, "out": 300 + index % 13},
        "cost": 0.0012,
        "latency_ms": 812,
        "retries": 0,
        "response_text": "Here is the change you asked for: " + "x" * 200,
    }


# Workers (forked; each opens its own connection) ------------------------------------------------------------


def record_worker(task: tuple[int, int, int, float]) -> tuple[float, float]:
    """Write `count` events with audit.record(), each in its own transaction; returns (seconds, CPU seconds)."""
    org_id, count, worker, start_at = task
    from django.db import connection

    from audit.services import AgentActor, record
    from organizations.models import Organization

    connection.close()
    organization = Organization.objects.get(pk=org_id)
    actor = AgentActor(user=_BenchUser(), session_id=str(uuid.uuid4()))
    _wait(start_at)
    began, cpu_began = time.perf_counter(), time.process_time()
    for index in range(count):
        record(action="model.call", actor=actor, organization=organization, data=event_data(index), model_call_id=index)
    from audit.chaining import wait_until_chained

    wait_until_chained(300)  # batched mode: this process's chainer has moved what it was woken for
    elapsed = time.perf_counter() - began
    connection.close()
    return elapsed, time.process_time() - cpu_began


def plain_worker(task: tuple[int, int, int, float]) -> tuple[float, float]:
    """INSERT the same rows without the chain (disjoint sequence numbers), one per transaction (autocommit)."""
    org_id, count, worker, start_at = task
    import datetime as dt
    import json

    from django.db import connection

    connection.close()
    columns = (
        "id, organization_id, sequence, occurred_at, action, outcome, error, actor_type, actor_id, actor_display, "
        "auth_method, source_ip, user_agent, request_id, target_type, target_id, target_display, session_id, "
        "workspace_id, model_call_id, data, prev_hash, hash"
    )
    sql = f"INSERT INTO {PLAIN_TABLE} ({columns}) VALUES ({', '.join(['%s'] * 23)})"
    session = str(uuid.uuid4())
    _wait(start_at)
    began, cpu_began = time.perf_counter(), time.process_time()
    with connection.cursor() as cursor:
        for index in range(count):
            cursor.execute(
                sql,
                [
                    str(uuid.uuid4()),
                    org_id,
                    worker * 10_000_000 + index + 1,
                    dt.datetime.now(dt.UTC),
                    "model.call",
                    "success",
                    "",
                    "agent",
                    "1",
                    f"agent acting for bench in session {session}",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    session,
                    "",
                    str(index),
                    json.dumps(event_data(index)),
                    "0" * 64,
                    "f" * 64,
                ],
            )
    elapsed = time.perf_counter() - began
    connection.close()
    return elapsed, time.process_time() - cpu_began


class _BenchUser:
    """Enough of a user for an AgentActor (no row needed)."""

    pk = 1

    def get_username(self) -> str:
        return "bench"


def _wait(start_at: float) -> None:
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)


def start_chainer_process() -> subprocess.Popen:
    """`manage.py audit chainer` against the benchmark database (stopped with SIGTERM at the end)."""
    env = {**os.environ, "AIRLOCK_AUDIT_CHAINER": "process", "AIRLOCK_AUDIT_CHAINING": "batched"}
    process = subprocess.Popen(
        [sys.executable, "manage.py", "audit", "chainer"], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
    )
    if "running" not in (process.stdout.readline() if process.stdout else ""):
        process.kill()
        sys.exit("the audit chainer process did not start")
    return process


def wait_until_nothing_pending(timeout: float = 300.0) -> None:
    """Poll until the chainer has moved every pending event (5 ms steps)."""
    from audit.models import AuditPendingEvent

    deadline = time.monotonic() + timeout
    while AuditPendingEvent.objects.exists():
        if time.monotonic() > deadline:
            sys.exit("events were still pending after the timeout: is the chainer running?")
        time.sleep(0.005)


def busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (Linux /proc/stat), None elsewhere."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(value) for value in stat.readline().split()[1:]]
    except OSError:
        return None
    idle = ticks[3] + ticks[4]  # idle and iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc), 0 where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class RunFigures:
    """One run: events per second overall, wall seconds, and CPU microseconds per event by where they went."""

    rate: float
    wall: float
    cpu_writers: float
    cpu_chainer: float
    cpu_total: float | None  # the whole machine; the rest is the database (and this script's polling)


def run(worker, org_ids: list[int], per_writer: int, chainer_pid: int | None) -> RunFigures:
    """Start WRITERS processes together and measure them.

    The wall time ends when the writers are done and, in batched mode, when nothing is left pending.
    """
    from django.db import connections

    connections.close_all()
    start_at = time.time() + 1.0
    tasks = [(org_ids[index % len(org_ids)], per_writer, index, start_at) for index in range(WRITERS)]
    began = time.time()
    with multiprocessing.get_context("fork").Pool(WRITERS) as pool:
        _wait(start_at)
        machine_began = busy_cpu_seconds()
        chainer_began = process_cpu_seconds(chainer_pid) if chainer_pid else 0.0
        results = pool.map(worker, tasks, chunksize=1)
    from django.conf import settings

    if worker is record_worker and settings.AUDIT_CHAINING == "batched":
        if settings.AUDIT_CHAINER == "process":
            wait_until_nothing_pending()
        else:
            from audit.chaining import chain_pending

            for org_id in org_ids:  # leftovers of a wake-up that lost the race to another process's chainer
                chain_pending(org_id, wait=True)
    wall = time.time() - max(began, start_at)
    machine_ended = busy_cpu_seconds()
    chainer_cpu = process_cpu_seconds(chainer_pid) - chainer_began if chainer_pid else 0.0
    connections.close_all()
    events = WRITERS * per_writer
    per_event = 1e6 / events
    machine_cpu = None if machine_began is None or machine_ended is None else machine_ended - machine_began
    return RunFigures(
        rate=events / wall,
        wall=wall,
        cpu_writers=sum(cpu for _elapsed, cpu in results) * per_event,
        cpu_chainer=chainer_cpu * per_event,
        cpu_total=None if machine_cpu is None else machine_cpu * per_event,
    )


def check_chains(org_ids: list[int], expected: int) -> None:
    """The hashed runs must have produced intact, gapless chains."""
    from audit.verify import verify_chain
    from organizations.models import Organization

    for org in Organization.objects.filter(pk__in=org_ids):
        result = verify_chain(organization=org)
        if not result.ok or result.head_sequence != expected:
            sys.exit(f"chain of {org.slug} broken after the run: {result.reason} (head #{result.head_sequence})")


def profile_record(org_id: int, count: int) -> str:
    """cProfile of record() in this process, cumulative time, top entries."""
    from audit.services import AgentActor, record
    from organizations.models import Organization

    organization = Organization.objects.get(pk=org_id)
    actor = AgentActor(user=_BenchUser(), session_id=str(uuid.uuid4()))
    profiler = cProfile.Profile()
    began = time.perf_counter()
    profiler.enable()
    for index in range(count):
        record(action="model.call", actor=actor, organization=organization, data=event_data(index))
    profiler.disable()
    elapsed = time.perf_counter() - began
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
    return f"one process, {count} events: {count / elapsed:,.0f} events/s under the profiler\n" + out.getvalue()


def main() -> None:
    """Run the four measurements and print figures, ratios and the verdict."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000, help="events per writer (default 1000)")
    parser.add_argument("--profile", action="store_true", help="also profile record() in one process")
    parser.add_argument(
        "--repeat", type=int, default=3, help="repetitions of every run; medians are reported (default 3)"
    )
    parser.add_argument(
        "--chaining",
        choices=["immediate", "batched", "both"],
        default="both",
        help="AUDIT_CHAINING mode(s) of record() to measure (default both)",
    )
    parser.add_argument(
        "--chainer",
        choices=["process", "thread"],
        default="process",
        help="batched mode: a dedicated `audit chainer` process (default) or a thread in each writer",
    )
    args = parser.parse_args()
    setup_django()
    from django.conf import settings

    settings.AUDIT_CHAINER = args.chainer  # inherited by the forked writers
    chainer = start_chainer_process() if args.chainer == "process" and args.chaining != "immediate" else None
    try:
        measure(args, settings, chainer_pid=chainer.pid if chainer is not None else None)
    finally:
        if chainer is not None:
            chainer.terminate()
            chainer.wait(timeout=30)


def measure(args: argparse.Namespace, settings: Any, *, chainer_pid: int | None) -> None:
    """The runs, their figures (rates, and CPU per event by where it went) and the verdict."""

    per_writer = args.events
    modes = ["immediate", "batched"] if args.chaining == "both" else [args.chaining]

    runs = [
        (f"record() {mode}, {n} org{'s' if n > 1 else ''}", record_worker, n, mode) for mode in modes for n in (1, 8)
    ]
    runs += [("plain INSERT, 1 org", plain_worker, 1, None), ("plain INSERT, 8 orgs", plain_worker, WRITERS, None)]
    samples: dict[str, list[float]] = {label: [] for label, *_ in runs}
    cpu_samples: dict[str, list[RunFigures]] = {label: [] for label, *_ in runs}
    ratios: dict[tuple[str, int], list[float]] = {}
    for repetition in range(args.repeat):
        rates = {}
        for label, worker, orgs, mode in runs:
            if mode is not None:
                settings.AUDIT_CHAINING = mode  # inherited by the forked writers
            org_ids = reset(WRITERS)[:orgs]
            figures = run(worker, org_ids, per_writer, chainer_pid if mode == "batched" else None)
            if worker is record_worker:
                check_chains(org_ids, WRITERS * per_writer // orgs)
            rates[label] = figures.rate
            samples[label].append(figures.rate)
            cpu_samples[label].append(figures)
            print(
                f"[{repetition + 1}/{args.repeat}] {label:28s} {WRITERS} writers x {per_writer} events: "
                f"{figures.rate:8,.0f} events/s total, {figures.rate / orgs:8,.0f} per organization "
                f"({figures.wall:.2f} s; {cpu_split(figures)})",
                flush=True,
            )
        for mode in modes:  # ratios within one repetition: both rates saw the same machine
            for orgs, suffix in ((1, "1 org"), (WRITERS, "8 orgs")):
                plain = rates[f"plain INSERT, {suffix}"]
                ratios.setdefault((mode, orgs), []).append(rates[f"record() {mode}, {suffix}"] / plain)

    for mode in modes:
        one = statistics.median(samples[f"record() {mode}, 1 org"])
        many = statistics.median(samples[f"record() {mode}, 8 orgs"])
        ratio_one, ratio_many = statistics.median(ratios[(mode, 1)]), statistics.median(ratios[(mode, WRITERS)])
        spread_one = ", ".join(f"{r:.2f}" for r in ratios[(mode, 1)])
        spread_many = ", ".join(f"{r:.2f}" for r in ratios[(mode, WRITERS)])
        print()
        print(f"{mode}: medians of {args.repeat} repetitions")
        target = f"target >= {TARGET_RATIO}"
        print(f"{mode}: ratio record()/plain INSERT, 1 org:  {ratio_one:.2f} ({spread_one}; {target})")
        print(f"{mode}: ratio record()/plain INSERT, 8 orgs: {ratio_many:.2f} ({spread_many}; {target})")
        plain_one = statistics.median(samples["plain INSERT, 1 org"])
        plain_many = statistics.median(samples["plain INSERT, 8 orgs"]) / WRITERS
        print(f"plain INSERT of the same rows, per organization: {plain_one:,.0f} (1 org), {plain_many:,.0f} (8 orgs)")
        print(f"{mode}: per organization, 1 org:  {one:,.0f} events/s (target >= {TARGET_PER_ORG:,.0f})")
        print(f"{mode}: per organization, 8 orgs: {many / WRITERS:,.0f} events/s (target >= {TARGET_PER_ORG:,.0f})")
        met = one >= TARGET_PER_ORG and ratio_one >= TARGET_RATIO and ratio_many >= TARGET_RATIO
        print(f"{mode}: targets met" if met else f"{mode}: targets NOT met")
    print()
    print("CPU per event, medians (the database's share is the machine's busy time less the writers' and chainer's):")
    for label, figures in cpu_samples.items():
        print(f"  {label:28s} {cpu_split(median_figures(figures))}")
    print(f"(batched chainer: {args.chainer}; load average {os.getloadavg()[0]:.1f}: a shared machine lowers both")
    print(" rates, record() more)")
    if args.profile:
        org_ids = reset(1)
        print()
        print(profile_record(org_ids[0], 2000))


def median_figures(figures: list[RunFigures]) -> RunFigures:
    """Each figure's median over repetitions."""
    totals = [figure.cpu_total for figure in figures if figure.cpu_total is not None]
    return RunFigures(
        rate=statistics.median(figure.rate for figure in figures),
        wall=statistics.median(figure.wall for figure in figures),
        cpu_writers=statistics.median(figure.cpu_writers for figure in figures),
        cpu_chainer=statistics.median(figure.cpu_chainer for figure in figures),
        cpu_total=statistics.median(totals) if totals else None,
    )


def cpu_split(figures: RunFigures) -> str:
    """'CPU/event: N µs (writers W, chainer C, database D)', without the total where /proc/stat is missing."""
    parts = f"writers {figures.cpu_writers:.0f}"
    if figures.cpu_chainer:
        parts += f", chainer {figures.cpu_chainer:.0f}"
    if figures.cpu_total is None:
        return f"CPU/event µs: {parts}"
    rest = figures.cpu_total - figures.cpu_writers - figures.cpu_chainer
    return f"CPU/event {figures.cpu_total:.0f} µs: {parts}, database {rest:.0f}"


if __name__ == "__main__":
    main()
