"""Benchmark: what the bubblewrap sandbox adds to one workspace command, against the local backend in the same run.

    .venv/bin/python bench/workspace_sandbox.py [--runs 100] [--warmup 5]

Runs the same short commands through `LocalBackend.run` (a shell in a directory: the baseline) and
`BubblewrapBackend.run` (the same, inside a fresh sandbox per command, started as the unprivileged sandbox
user when this runs as root), interleaved and rotating which goes first, and prints p50/p95 of each, the
ratio sandbox/local and the milliseconds the sandbox adds. No database: the workspaces are unsaved rows.
Results also go to bench/results/workspace_sandbox-<time>.json (git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

COMMANDS = {"true": "true", "echo": "echo hello", "python": "python3 -c 'print(sum(range(1000)))'"}


def setup_django(data_dir: str) -> None:
    """Test settings with a private data folder (traversable by the sandbox user)."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "portal.settings.test"
    os.environ.setdefault("AIRLOCK_DATA_DIR", data_dir)
    import django

    django.setup()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


async def timed(backend, workspace, command: str) -> float:
    async def ignore(_line: str) -> None:
        return None

    started = time.perf_counter()
    result = await backend.run(workspace=workspace, command=command, timeout=30, output_cap=65536, on_line=ignore)
    elapsed = (time.perf_counter() - started) * 1000
    if result.exit_code != 0:
        raise SystemExit(f"{backend.name}: {command!r} exited {result.exit_code}: {result.output[:500]}")
    return elapsed


async def main(runs: int, warmup: int) -> dict:
    from django.conf import settings

    from workspaces.backends import get_backend
    from workspaces.backends.bubblewrap import sandbox_problem
    from workspaces.models import Workspace

    settings.WORKSPACES_ROOT = Path(settings.DATA_DIR) / "bench-workspaces"
    problem = sandbox_problem()
    if problem:
        raise SystemExit(f"no sandbox on this host: {problem}")
    backends = {name: get_backend(name) for name in ("local", "bubblewrap")}
    workspaces = {}
    for name, backend in backends.items():
        workspace = Workspace(id=uuid.uuid4(), organization_id=1, name=f"bench-{name}")
        workspace.directory = backend.directory_for(workspace)
        backend.prepare(workspace)
        workspaces[name] = workspace
    report: dict = {"runs": runs, "commands": {}}
    for label, command in COMMANDS.items():
        times: dict[str, list[float]] = {name: [] for name in backends}
        for index in range(warmup + runs):
            order = list(backends) if index % 2 == 0 else list(reversed(backends))
            for name in order:
                elapsed = await timed(backends[name], workspaces[name], command)
                if index >= warmup:
                    times[name].append(elapsed)
        row = {}
        for name, values in times.items():
            row[name] = {
                "p50_ms": percentile(values, 0.5),
                "p95_ms": percentile(values, 0.95),
                "mean_ms": statistics.fmean(values),
            }
        row["ratio_p50"] = row["bubblewrap"]["p50_ms"] / row["local"]["p50_ms"]
        row["added_p50_ms"] = row["bubblewrap"]["p50_ms"] - row["local"]["p50_ms"]
        report["commands"][label] = row
        print(
            f"{label:>7}: local p50 {row['local']['p50_ms']:6.1f} ms (p95 {row['local']['p95_ms']:6.1f}) | "
            f"sandbox p50 {row['bubblewrap']['p50_ms']:6.1f} ms (p95 {row['bubblewrap']['p95_ms']:6.1f}) | "
            f"ratio {row['ratio_p50']:.2f}, +{row['added_p50_ms']:.1f} ms"
        )
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="airlock-bench-", dir=str(REPO / "data")) as data:
        os.chmod(data, 0o755)
        setup_django(data)
        result = asyncio.run(main(arguments.runs, arguments.warmup))
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    (out / f"workspace_sandbox-{stamp}.json").write_text(json.dumps(result, indent=2))
