"""Usage and cost: the price of a call from the model's prices, and the stored ModelCall row."""

from __future__ import annotations

from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from providers.clients import CallSummary, Usage, stream_turn
from providers.models import LanguageModel, ModelCall
from providers.usage import call_cost, model_call_record
from tests.factories import LanguageModelFactory
from tests.providers.conftest import EXECUTE


@pytest.fixture
def priced(org) -> LanguageModel:
    """$3 per million input tokens, $15 output, $0.30 cache reads, $3.75 cache writes."""
    return LanguageModelFactory(
        provider__organization=org,
        provider__name="Claude",
        identifier="claude-priced",
        input_price_per_mtok=Decimal("3"),
        output_price_per_mtok=Decimal("15"),
        cache_read_price_per_mtok=Decimal("0.30"),
        cache_write_price_per_mtok=Decimal("3.75"),
    )


def test_cost_of_1000_input_and_500_output_tokens_at_3_and_15_dollars_per_million(priced):
    assert call_cost(model=priced, usage=Usage(input_tokens=1_000, output_tokens=500)) == Decimal("0.0105")


def test_cache_reads_and_writes_are_priced_at_their_own_rates(priced):
    usage = Usage(input_tokens=1_000, output_tokens=500, cache_read_tokens=10_000, cache_write_tokens=2_000)

    assert call_cost(model=priced, usage=usage) == Decimal("0.0105") + Decimal("0.003") + Decimal("0.0075")


def test_a_free_model_costs_nothing(org):
    model = LanguageModelFactory(provider__organization=org)

    assert call_cost(model=model, usage=Usage(123_456, 7_890)) == Decimal(0)


def test_a_recorded_call_keeps_tokens_cost_latency_and_attempts(priced, agents_user):
    summary = CallSummary(
        attempts=2,
        model_id=priced.pk,
        model_identifier="claude-priced",
        provider_name="Claude",
        time_to_first_token_ms=85,
    )

    call = model_call_record(
        model=priced,
        user_id=agents_user.pk,
        session_id="sess-1",
        status="success",
        usage=Usage(1_000, 500),
        latency_ms=1234,
        summary=summary,
        stop_reason="end_turn",
    )

    stored = ModelCall.objects.get(pk=call.pk)
    assert stored.cost == Decimal("0.0105") and (stored.input_tokens, stored.output_tokens) == (1_000, 500)
    assert (stored.latency_ms, stored.time_to_first_token_ms, stored.attempts) == (1234, 85, 2)
    assert (stored.provider_name, stored.model_identifier, stored.model_id) == ("Claude", "claude-priced", priced.pk)
    assert stored.organization_id == priced.organization_id and stored.user_id == agents_user.pk
    assert (stored.session_id, stored.status, stored.stop_reason, stored.fell_back_from) == (
        "sess-1",
        "success",
        "end_turn",
        "",
    )


def test_a_fallback_call_is_priced_at_the_model_that_answered(priced, org):
    cheap = LanguageModelFactory(
        provider__organization=org, provider__name="Local", identifier="local-small", input_price_per_mtok=Decimal(1)
    )
    summary = CallSummary(
        attempts=4,
        model_id=cheap.pk,
        model_identifier="local-small",
        provider_name="Local",
        fell_back_from="claude-priced",
    )

    call = model_call_record(
        model=priced,
        user_id=None,
        session_id="s",
        status="success",
        usage=Usage(1_000_000, 0),
        latency_ms=10,
        summary=summary,
    )

    assert call.cost == Decimal(1) and call.model_id == cheap.pk and call.fell_back_from == "claude-priced"


def test_a_failed_call_is_recorded_with_its_error_and_no_cost(priced):
    call = model_call_record(
        model=priced,
        user_id=None,
        session_id="s",
        status="failure",
        usage=None,
        latency_ms=50,
        summary=None,
        error="500: provider failed",
    )

    assert (call.status, call.cost, call.error, call.provider_name) == (
        "failure",
        Decimal(0),
        "500: provider failed",
        "Claude",
    )


def test_an_unknown_status_is_refused(priced):
    with pytest.raises(ValueError, match="Unknown model call status 'ok'"):
        model_call_record(
            model=priced, user_id=None, session_id="", status="ok", usage=None, latency_ms=0, summary=None
        )


@pytest.mark.django_db(transaction=True)
async def test_a_streamed_turn_yields_usage_and_summary_that_price_the_call(simulator):
    def make() -> LanguageModel:
        from tests.factories import OrganizationFactory

        return LanguageModelFactory(
            provider__organization=OrganizationFactory(slug="metered"),
            provider__base_url=simulator.base_url,
            input_price_per_mtok=Decimal(3),
            output_price_per_mtok=Decimal(15),
        )

    try:
        model = await sync_to_async(make)()
        simulator.enqueue({"text": "priced", "usage": {"prompt_tokens": 1_000, "completion_tokens": 500}})

        events = [
            e
            async for e in stream_turn(
                model=model, system="", messages=[{"role": "user", "content": "hi"}], tools=[EXECUTE]
            )
        ]
        usage = next(e for e in events if isinstance(e, Usage))
        summary = next(e for e in events if isinstance(e, CallSummary))
        call = await sync_to_async(model_call_record)(
            model=model, user_id=None, session_id="s", status="success", usage=usage, latency_ms=5, summary=summary
        )
    finally:
        await sync_to_async(connections.close_all)()  # the worker thread's connection

    assert call.cost == Decimal("0.0105") and call.attempts == 1 and call.time_to_first_token_ms is not None
