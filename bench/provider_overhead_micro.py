"""Micro-benchmark: per-chunk cost of Airlock's client layer over an in-memory stream (no network, no simulator).

    .venv/bin/python bench/provider_overhead_micro.py [--chunks 2000] [--runs 200] [--profile]

The OpenAI adapter's SDK client is replaced by a fake whose stream yields pre-decoded chunks (the JSON objects
the SDK hands over with `cast_to=object`, as the adapter asks it to; the SDK's own decoding is the same on both
paths, so it is left out); the baseline consumes those chunks' text directly, as the `decoded` path of
`bench/provider_overhead.py` does with the real SDK. Prints the median time of each path and the
microseconds added per chunk. `--profile` runs stream_turn under cProfile instead.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SYSTEM = "You are a helpful coding agent."
PROMPT = [{"role": "user", "content": "Explain the repository layout in detail."}]


def make_chunks(count: int) -> list[dict]:
    """`count` text chunks of 4 characters, a finishing chunk and a usage chunk, as the SDK decodes them."""

    def chunk(choices: list, usage: dict | None = None) -> dict:
        return {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "m",
            "choices": choices,
            "usage": usage,
        }

    chunks = [chunk([{"index": 0, "delta": {"role": "assistant", "content": "abc "}, "finish_reason": None}])]
    chunks += [chunk([{"index": 0, "delta": {"content": "abc "}, "finish_reason": None}]) for _ in range(count - 1)]
    chunks.append(chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    chunks.append(chunk([], {"prompt_tokens": 20, "completion_tokens": count, "total_tokens": 20 + count}))
    return chunks


class FakeStream:
    """What `client.post(..., stream=True, stream_cls=AsyncStream[object])` returns: a context manager and iterator."""

    def __init__(self, chunks: list) -> None:
        self._chunks = chunks

    async def __aenter__(self) -> FakeStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def __aiter__(self):
        for chunk in self._chunks:
            yield chunk


class FakeClient:
    """Just enough of `openai.AsyncOpenAI`."""

    def __init__(self, chunks: list) -> None:
        self.chunks = chunks

    async def post(self, path: str, **_: object) -> FakeStream:
        return FakeStream(self.chunks)


async def direct_run(client: FakeClient) -> int:
    chars = 0
    stream = await client.post("/chat/completions")
    async with stream:
        async for chunk in stream:
            for choice in chunk["choices"]:
                content = choice["delta"].get("content")
                if content:
                    chars += len(content)
    return chars


async def airlock_run(model) -> int:
    from providers.clients import TextDelta, stream_turn

    chars = 0
    async for event in stream_turn(model=model, system=SYSTEM, messages=PROMPT, tools=[]):
        if isinstance(event, TextDelta):
            chars += len(event.text)
    return chars


async def measure(client: FakeClient, model, runs: int) -> tuple[list[float], list[float]]:
    direct: list[float] = []
    airlock: list[float] = []
    for index in range(runs + 10):
        for name in ("direct", "airlock") if index % 2 == 0 else ("airlock", "direct"):
            started = time.perf_counter()
            chars = await (direct_run(client) if name == "direct" else airlock_run(model))
            elapsed = (time.perf_counter() - started) * 1000
            assert chars == 4 * (len(client.chunks) - 2), chars
            if index >= 10:
                (direct if name == "direct" else airlock).append(elapsed)
    return direct, airlock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="airlock-bench-") as tmp:
        os.environ["DJANGO_SETTINGS_MODULE"] = "portal.settings.test"
        os.environ.setdefault("AIRLOCK_DATA_DIR", tmp)
        import django

        django.setup()
        from providers.clients import openai_compatible
        from providers.models import LanguageModel, Provider

        client = FakeClient(make_chunks(args.chunks))

        async def fake_client_for(**_: object) -> FakeClient:
            return client

        openai_compatible.client_for = fake_client_for
        provider = Provider(id=1, organization_id=1, name="bench", kind="openai-compatible", base_url="http://x/v1")
        model = LanguageModel(id=1, organization_id=1, provider=provider, identifier="m", context_limit=128_000)

        if args.profile:
            profiler = cProfile.Profile()

            async def profiled() -> None:
                for _ in range(20):
                    await airlock_run(model)

            profiler.enable()
            asyncio.run(profiled())
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
            return 0

        direct, airlock = asyncio.run(measure(client, model, args.runs))
    d50, a50 = statistics.median(direct), statistics.median(airlock)
    paired = statistics.median(a - d for a, d in zip(airlock, direct, strict=True))
    print(f"Micro-benchmark: {args.chunks} in-memory chunks, {args.runs} interleaved runs each")
    print(
        f"direct p50 {d50:.3f} ms, airlock p50 {a50:.3f} ms, added {a50 - d50:.3f} ms "
        f"(paired median {paired:.3f} ms), {1000 * (a50 - d50) / args.chunks:.2f} us per chunk"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
