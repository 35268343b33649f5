"""Our retry layer: backoff honouring Retry-After, bounded attempts, no replay of a half-streamed answer, fallback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from providers.clients import CallSummary, ModelCallError, RetryPolicy, TextDelta, TurnEnd, stream_turn
from providers.models import LanguageModel
from providers.simulator import ModelSimulator
from tests.factories import LanguageModelFactory
from tests.providers.conftest import EXECUTE

PROMPT = [{"role": "user", "content": "hello"}]


async def run(model: LanguageModel) -> tuple[str, CallSummary, list]:
    """(text, summary, events) of one turn."""
    events = [e async for e in stream_turn(model=model, system="", messages=PROMPT, tools=[EXECUTE])]
    summary = next(e for e in events if isinstance(e, CallSummary))
    return "".join(e.text for e in events if isinstance(e, TextDelta)), summary, events


async def failure(model: LanguageModel) -> ModelCallError:
    with pytest.raises(ModelCallError) as error:
        await run(model)
    return error.value


@pytest.fixture(autouse=True)
def quick_retries(settings) -> None:
    """Two retries, with waits of milliseconds unless the provider asks for more."""
    settings.PROVIDER_MAX_RETRIES = 2
    settings.PROVIDER_RETRY_BASE_SECONDS = 0.01
    settings.PROVIDER_RETRY_MAX_SECONDS = 1.0


@pytest.fixture
def backup_simulator() -> Iterator[ModelSimulator]:
    """A second model server, for the fallback model."""
    with ModelSimulator() as sim:
        yield sim


@pytest.fixture(params=["openai-compatible", "anthropic"])
def model(request, org, simulator) -> LanguageModel:
    """The model under test, once per wire protocol."""
    kind = request.param
    base_url = simulator.base_url if kind == "openai-compatible" else simulator.root_url
    return LanguageModelFactory(
        provider__organization=org, provider__kind=kind, provider__name="Primary", provider__base_url=base_url
    )


@pytest.fixture
def with_fallback(org, simulator, backup_simulator) -> LanguageModel:
    """An OpenAI-compatible model whose fallback is an Anthropic model on another server."""
    backup = LanguageModelFactory(
        provider__organization=org,
        provider__kind="anthropic",
        provider__name="Backup",
        provider__base_url=backup_simulator.root_url,
        identifier="claude-backup",
    )
    return LanguageModelFactory(
        provider__organization=org,
        provider__name="Primary",
        provider__base_url=simulator.base_url,
        identifier="primary-model",
        fallback=backup,
    )


@pytest.fixture
def with_disabled_fallback(org, simulator, backup_simulator) -> LanguageModel:
    backup = LanguageModelFactory(
        provider__organization=org, provider__base_url=backup_simulator.base_url, is_enabled=False
    )
    return LanguageModelFactory(provider__organization=org, provider__base_url=simulator.base_url, fallback=backup)


async def test_429_with_retry_after_waits_that_long_then_succeeds(model, simulator):
    simulator.enqueue({"error": {"status": 429, "retry_after": 0.4}}, {"text": "made it"})

    text, summary, events = await run(model)

    first, second = (entry["received_at"] for entry in simulator.request_log)
    assert text == "made it" and events[-2:] == [summary, TurnEnd("end_turn")]
    assert summary.attempts == 2 and summary.fell_back_from == "" and summary.provider_name == "Primary"
    assert 0.4 <= second - first < 1.2, f"waited {second - first:.2f} s for a Retry-After of 0.4 s"
    assert summary.time_to_first_token_ms is not None and summary.time_to_first_token_ms >= 400


async def test_a_huge_retry_after_is_capped_by_the_maximum_wait(model, simulator, settings):
    settings.PROVIDER_RETRY_MAX_SECONDS = 0.1
    simulator.enqueue({"error": {"status": 429, "retry_after": 3600}}, {"text": "ok"})

    text, summary, _ = await run(model)

    first, second = (entry["received_at"] for entry in simulator.request_log)
    assert text == "ok" and summary.attempts == 2 and second - first < 1.0


async def test_500_on_every_attempt_gives_up_after_the_retry_budget(model, simulator):
    simulator.enqueue(*[{"error": {"status": 500, "message": "GPU on fire"}}] * 3)

    error = await failure(model)

    assert error.attempts == 3 and len(simulator.requests) == 3
    assert "GPU on fire" in str(error) and "(gave up after 3 attempts)" in str(error)


async def test_a_call_that_gave_up_sends_nothing_more_when_iterated_again(model, simulator):
    simulator.enqueue({"error": {"status": 400, "message": "bad tool schema"}}, {"text": "never"})
    events = stream_turn(model=model, system="", messages=PROMPT, tools=[])

    with pytest.raises(ModelCallError):
        await events.__anext__()
    with pytest.raises(StopAsyncIteration):
        await events.__anext__()

    assert len(simulator.requests) == 1


async def test_a_rejected_request_is_not_retried(model, simulator):
    simulator.enqueue({"error": {"status": 400, "message": "bad tool schema"}}, {"text": "never"})

    error = await failure(model)

    assert error.attempts == 1 and len(simulator.requests) == 1 and "bad tool schema" in str(error)


async def test_exhausted_retries_fall_back_to_the_fallback_model(with_fallback, simulator, backup_simulator):
    simulator.enqueue(*[{"error": {"status": 503}}] * 3)
    backup_simulator.enqueue({"text": "the backup answers"})

    text, summary, _ = await run(with_fallback)

    assert text == "the backup answers"
    assert summary.fell_back_from == "primary-model" and summary.model_identifier == "claude-backup"
    assert summary.model_id == with_fallback.fallback_id and summary.provider_name == "Backup"
    assert summary.attempts == 4 and len(simulator.requests) == 3 and len(backup_simulator.requests) == 1


async def test_when_the_fallback_fails_too_the_error_names_both(with_fallback, simulator, backup_simulator):
    simulator.enqueue(*[{"error": {"status": 500, "message": "primary down"}}] * 3)
    backup_simulator.enqueue({"error": {"status": 401}})

    error = await failure(with_fallback)

    assert "primary down" in str(error) and "The fallback model 'claude-backup' failed too: 401" in str(error)
    assert error.attempts == 4 and error.status == 401


async def test_a_disabled_fallback_is_not_called(with_disabled_fallback, simulator, backup_simulator, settings):
    settings.PROVIDER_MAX_RETRIES = 0
    simulator.enqueue({"error": {"status": 500}})

    error = await failure(with_disabled_fallback)

    assert error.status == 500 and backup_simulator.requests == []


async def test_a_connection_dropped_after_text_was_shown_is_not_replayed(model, simulator):
    simulator.enqueue({"text": "the first part of a long answer", "drop_after_chunks": 5}, {"text": "again"})

    shown: list[str] = []
    with pytest.raises(ModelCallError) as error:
        async for event in stream_turn(model=model, system="", messages=PROMPT, tools=[]):
            if isinstance(event, TextDelta):
                shown.append(event.text)

    assert shown, "part of the answer reached the caller"
    assert "dropped in the middle of the answer" in str(error.value)
    assert str(error.value).count("did not retry it automatically") == 1
    assert error.value.attempts == 1 and len(simulator.requests) == 1


async def test_a_drop_after_a_retried_start_counts_every_attempt(model, simulator):
    simulator.enqueue({"error": {"status": 500}}, {"text": "the first part of a long answer", "drop_after_chunks": 5})

    with pytest.raises(ModelCallError) as error:
        async for _event in stream_turn(model=model, system="", messages=PROMPT, tools=[]):
            pass

    assert error.value.attempts == 2 and len(simulator.requests) == 2
    assert str(error.value).count("did not retry it automatically") == 1


async def test_a_connection_dropped_before_any_text_is_retried(model, simulator):
    simulator.enqueue({"text": "cut", "drop_after_chunks": 1}, {"text": "whole answer"})

    text, summary, _ = await run(model)

    assert text == "whole answer" and summary.attempts == 2


async def test_a_slow_first_byte_under_the_timeout_works(model, simulator, settings):
    settings.PROVIDER_TIMEOUT_SECONDS = 2
    simulator.enqueue({"text": "slow but fine", "delay": 0.3})

    text, summary, _ = await run(model)

    assert text == "slow but fine" and summary.attempts == 1


async def test_a_first_byte_slower_than_the_timeout_fails_with_a_timeout_message(model, simulator, settings):
    settings.PROVIDER_MAX_RETRIES = 0
    settings.PROVIDER_TIMEOUT_SECONDS = 0.3
    simulator.enqueue({"text": "too late", "delay": 1.2})

    error = await failure(model)

    assert "Timed out waiting for 127.0.0.1:" in str(error) and "(limit 0.3 s)" in str(error) and error.retryable


def test_backoff_is_exponential_with_full_jitter_and_capped():
    policy = RetryPolicy(max_retries=5, base_seconds=0.5, max_seconds=20)

    waits = {retry: [policy.delay(retry) for _ in range(200)] for retry in (1, 3, 8)}

    assert all(0 <= w <= 0.5 for w in waits[1]) and max(waits[1]) > 0.25
    assert all(0 <= w <= 2.0 for w in waits[3]) and max(waits[3]) > 1.0
    assert all(0 <= w <= 20 for w in waits[8]) and max(waits[8]) > 10
    assert len(set(waits[3])) > 150, "jittered, not a fixed schedule"
    assert policy.delay(1, retry_after=7) == 7 and policy.delay(1, retry_after=600) == 20
