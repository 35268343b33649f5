"""Benchmark: the overhead of Airlock's client layer (`stream_turn`) over the official `openai` SDK called directly.

    .venv/bin/python bench/provider_overhead.py [--runs 50] [--tokens 2000] [--warmup 5]

Starts the offline simulator in a subprocess (`python -m providers.simulator`, no pacing) scripted to stream a
2,000-token answer (one token = 4 characters, one chunk per token), then runs, interleaved and rotating which
goes first, the same request each time:
  (a) direct: `openai.AsyncOpenAI(...).chat.completions.create(stream=True)` consumed directly, as the SDK's
      documentation shows it (each chunk a pydantic ChatCompletionChunk). This is the issue's baseline.
  (b) decoded: the same SDK client asked for the stream's decoded JSON (`client.post(..., cast_to=object,
      stream_cls=AsyncStream[object])`), consumed directly. Airlock's adapter reads the stream this way, so
      (c) minus (b) is the cost of Airlock's own layer (translation, retry layer, neutral events) alone.
  (c) airlock: `providers.clients.stream_turn` (adapter + retry layer + event translation).
With `--layers` also (d) the OpenAI-protocol adapter alone, which shows what the retry layer adds on top of it.
It measures time to first token (first text delta) and total time (until the stream ends), and prints p50/p95 of
each path, the ratio to the direct SDK and the milliseconds added. Target: under 2 ms added at p50. Results also
go to bench/results/provider_overhead-<time>.json (git-ignored).

No database is needed: the provider and model are unsaved rows, as the agent loop holds them in memory.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET_ADDED_P50_MS = 2.0
SYSTEM = "You are a helpful coding agent."
PROMPT = [{"role": "user", "content": "Explain the repository layout in detail."}]


def setup_django(data_dir: str) -> None:
    """Test settings with a private data folder."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "portal.settings.test"
    os.environ.setdefault("AIRLOCK_DATA_DIR", data_dir)
    import django

    django.setup()


def start_simulator(script: Path) -> tuple[subprocess.Popen, str]:
    """The simulator in its own process; (process, base URL)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "providers.simulator", "--port", "0", "--chunk-delay", "0", "--script", str(script)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    line = process.stdout.readline() if process.stdout else ""
    match = re.search(r"http://127\.0\.0\.1:\d+/v1", line)
    if not match:
        process.kill()
        sys.exit(f"The simulator did not start: {line or (process.stderr.read() if process.stderr else '')}")
    return process, match.group(0)


def percentile(values: list[float], fraction: float) -> float:
    """Linear-interpolated percentile of a list."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


async def direct_run(client, model_identifier: str, expected_chars: int) -> tuple[float, float]:
    """(ttft ms, total ms) with the SDK called directly."""
    messages = [{"role": "system", "content": SYSTEM}, *PROMPT]
    started = time.perf_counter()
    first = None
    chars = 0
    stream = await client.chat.completions.create(
        model=model_identifier, messages=messages, stream=True, stream_options={"include_usage": True}
    )
    async with stream:
        async for chunk in stream:
            for choice in chunk.choices:
                if choice.delta is not None and choice.delta.content:
                    if first is None:
                        first = time.perf_counter()
                    chars += len(choice.delta.content)
    ended = time.perf_counter()
    assert chars == expected_chars, f"direct run got {chars} characters"
    return (first - started) * 1000, (ended - started) * 1000


async def decoded_run(client, model_identifier: str, expected_chars: int) -> tuple[float, float]:
    """(ttft ms, total ms) with the same SDK client handing over each chunk's decoded JSON, consumed directly."""
    import openai

    messages = [{"role": "system", "content": SYSTEM}, *PROMPT]
    body = {"model": model_identifier, "messages": messages, "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first = None
    chars = 0
    stream = await client.post(
        "/chat/completions", body=body, cast_to=object, stream=True, stream_cls=openai.AsyncStream[object]
    )
    async with stream:
        async for chunk in stream:
            for choice in chunk.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    if first is None:
                        first = time.perf_counter()
                    chars += len(content)
    ended = time.perf_counter()
    assert chars == expected_chars, f"decoded run got {chars} characters"
    return (first - started) * 1000, (ended - started) * 1000


async def _timed_events(events, expected_chars: int, label: str) -> tuple[float, float]:
    """(ttft ms, total ms) of consuming neutral events: the clock starts when the stream is created."""
    from providers.clients import TextDelta

    started = time.perf_counter()
    first = None
    chars = 0
    async for event in events():
        if isinstance(event, TextDelta):
            if first is None:
                first = time.perf_counter()
            chars += len(event.text)
    ended = time.perf_counter()
    assert chars == expected_chars, f"{label} run got {chars} characters"
    return (first - started) * 1000, (ended - started) * 1000


async def airlock_run(model, expected_chars: int) -> tuple[float, float]:
    """(ttft ms, total ms) through stream_turn."""
    from providers.clients import stream_turn

    def events():
        return stream_turn(model=model, system=SYSTEM, messages=PROMPT, tools=[])

    return await _timed_events(events, expected_chars, "airlock")


async def adapter_run(model, expected_chars: int) -> tuple[float, float]:
    """(ttft ms, total ms) through the OpenAI-protocol adapter alone, without stream_turn's retry layer."""
    from providers.clients.openai_compatible import stream

    def events():
        return stream(provider=model.provider, model=model, system=SYSTEM, messages=PROMPT, tools=[], correlation={})

    return await _timed_events(events, expected_chars, "adapter")


async def measure(
    base_url: str, *, runs: int, warmup: int, chars: int, layers: bool = False
) -> dict[str, dict[str, list[float]]]:
    """Interleaved runs of the paths (rotating which goes first); warm-up runs are discarded."""
    import openai

    from providers.models import LanguageModel, Provider

    provider = Provider(id=1, organization_id=1, name="bench", kind="openai-compatible", base_url=base_url)
    model = LanguageModel(id=1, organization_id=1, provider=provider, identifier="bench-model", context_limit=128_000)
    client = openai.AsyncOpenAI(base_url=base_url, api_key="not-needed", max_retries=0)
    names = ["direct", "decoded", "airlock", *(["adapter"] if layers else [])]
    samples: dict[str, dict[str, list[float]]] = {name: {"ttft": [], "total": []} for name in names}
    try:
        for index in range(warmup + runs):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                if name == "direct":
                    ttft, total = await direct_run(client, model.identifier, chars)
                elif name == "decoded":
                    ttft, total = await decoded_run(client, model.identifier, chars)
                elif name == "airlock":
                    ttft, total = await airlock_run(model, chars)
                else:
                    ttft, total = await adapter_run(model, chars)
                if index >= warmup:
                    samples[name]["ttft"].append(ttft)
                    samples[name]["total"].append(total)
    finally:
        await client.close()
    return samples


def paired_median(samples: dict[str, dict[str, list[float]]], metric: str, path: str, baseline: str) -> float:
    """The median of the run-by-run differences path minus baseline (steadier than a difference of p50s)."""
    pairs = zip(samples[path][metric], samples[baseline][metric], strict=True)
    return percentile([a - b for a, b in pairs], 0.50)


def summarize(samples: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    """p50/p95 of each path and metric, the ratio to the direct SDK and the added milliseconds."""
    summary: dict[str, dict[str, float]] = {}
    for metric in ("ttft", "total"):
        row: dict[str, float] = {}
        for name in samples:
            row[f"{name}_p50_ms"] = percentile(samples[name][metric], 0.50)
            row[f"{name}_p95_ms"] = percentile(samples[name][metric], 0.95)
        for q in ("p50", "p95"):
            row[f"added_{q}_ms"] = row[f"airlock_{q}_ms"] - row[f"direct_{q}_ms"]
            row[f"ratio_{q}"] = row[f"airlock_{q}_ms"] / row[f"direct_{q}_ms"] if row[f"direct_{q}_ms"] else 0.0
        row["paired_added_p50_ms"] = paired_median(samples, metric, "airlock", "direct")
        row["layer_paired_added_p50_ms"] = paired_median(samples, metric, "airlock", "decoded")
        if "adapter" in samples:
            row["adapter_layer_paired_added_p50_ms"] = paired_median(samples, metric, "adapter", "decoded")
        summary[metric] = row
    return summary


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="measured runs of each path (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="discarded warm-up runs of each path (default 5)")
    parser.add_argument("--tokens", type=int, default=2000, help="tokens in the streamed answer (default 2000)")
    parser.add_argument(
        "--layers", action="store_true", help="also time the adapter alone (what the retry layer adds on top of it)"
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="airlock-bench-") as tmp:
        setup_django(tmp)
        text = ("abc " * args.tokens)[: args.tokens * 4]  # 4 characters a token, one chunk a token
        turn = {"text": text, "chunk_chars": 4, "usage": {"prompt_tokens": 20, "completion_tokens": args.tokens}}
        script = Path(tmp) / "script.json"
        script.write_text(json.dumps([turn] * (4 * (args.runs + args.warmup))))
        process, base_url = start_simulator(script)
        load_before = os.getloadavg()[0]
        try:
            run = measure(base_url, runs=args.runs, warmup=args.warmup, chars=len(text), layers=args.layers)
            samples = asyncio.run(run)
        finally:
            process.terminate()
            process.wait(timeout=10)
        load_after = os.getloadavg()[0]

    summary = summarize(samples)
    print(f"Provider overhead: {args.tokens}-token streamed answer, {args.runs} interleaved runs each")
    # Both paths and the simulator share the CPUs: on a busy machine the spread swamps a few milliseconds.
    print(f"1-minute load average {load_before:.2f} before, {load_after:.2f} after ({os.cpu_count()} CPUs)")
    print(f"{'metric':<8}{'path':<10}{'p50 ms':>10}{'p95 ms':>10}")
    for metric in ("ttft", "total"):
        row = summary[metric]
        for name in samples:
            print(f"{metric:<8}{name:<10}{row[f'{name}_p50_ms']:>10.2f}{row[f'{name}_p95_ms']:>10.2f}")
        print(
            f"{metric:<8}{'added':<10}{row['added_p50_ms']:>10.2f}{row['added_p95_ms']:>10.2f}"
            f"   airlock vs direct: ratio p50 {row['ratio_p50']:.3f}, p95 {row['ratio_p95']:.3f}; "
            f"median of paired differences {row['paired_added_p50_ms']:.2f} ms"
        )
        print(
            f"{metric:<8}{'layer':<10} Airlock's own layer (airlock vs decoded) adds "
            f"{row['layer_paired_added_p50_ms']:.2f} ms (paired median)"
        )
        if "adapter_layer_paired_added_p50_ms" in row:
            print(
                f"{metric:<8}{'adapter':<10} the adapter alone (adapter vs decoded) adds "
                f"{row['adapter_layer_paired_added_p50_ms']:.2f} ms (paired median)"
            )
    for metric, label in (("ttft", "time to first token"), ("total", "total time")):
        # The difference of two p50s is noisy on a busy machine; the median of paired differences is steadier.
        added = max(summary[metric]["added_p50_ms"], summary[metric]["paired_added_p50_ms"])
        verdict = "meets" if added < TARGET_ADDED_P50_MS else "misses"
        print(
            f"Added at p50 over the direct SDK, {label} (larger estimate): {added:.2f} ms: "
            f"{verdict} the target of < 2 ms."
        )

    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = results / f"provider_overhead-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "runs": args.runs,
                "tokens": args.tokens,
                "load_average": [load_before, load_after],
                "summary": summary,
                "samples": samples,
            }
        )
    )
    print(f"Wrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
