"""Usage and cost of model calls: the price of a call, and the ModelCall row that keeps it for usage reports."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from django.db import transaction

from providers.clients.base import CallSummary, Usage
from providers.models import LanguageModel, ModelCall, ModelCallStatus

PER_MILLION = Decimal(1_000_000)
COST_QUANTUM = Decimal("0.00000001")  # ModelCall.cost keeps 8 decimal places
ERROR_CHARS = 2000


def call_cost(*, model: LanguageModel, usage: Usage) -> Decimal:
    """The price of a call in the model's currency: each kind of token at its price per million tokens."""
    total = (
        Decimal(usage.input_tokens) * model.input_price_per_mtok
        + Decimal(usage.output_tokens) * model.output_price_per_mtok
        + Decimal(usage.cache_read_tokens) * model.cache_read_price_per_mtok
        + Decimal(usage.cache_write_tokens) * model.cache_write_price_per_mtok
    )
    return (total / PER_MILLION).quantize(COST_QUANTUM, rounding=ROUND_HALF_UP)


def _answering_model(model: LanguageModel, summary: CallSummary | None) -> LanguageModel:
    """The model whose prices apply: the fallback when the call fell back to it."""
    if summary is None or summary.model_id in (None, model.pk):
        return model
    fallback = (
        LanguageModel.objects.select_related("provider")
        .filter(pk=summary.model_id, organization_id=model.organization_id)
        .first()
    )
    return fallback or model


@transaction.atomic
def model_call_record(
    *,
    model: LanguageModel,
    user_id: int | None,
    session_id: str,
    status: str,
    usage: Usage | None,
    latency_ms: int,
    summary: CallSummary | None,
    stop_reason: str = "",
    error: str = "",
) -> ModelCall:
    """Store one model call (after retries and fallback) with its tokens and cost; priced at the answering model.

    Not audited here: the agent loop audits the same call as `model.call` and may put the returned row's cost in it.
    """
    if status not in ModelCallStatus.values:
        raise ValueError(f"Unknown model call status {status!r}: use one of {', '.join(ModelCallStatus.values)}.")
    answering = _answering_model(model, summary)
    usage = usage or Usage(input_tokens=0, output_tokens=0)
    provider_name = summary.provider_name if summary and summary.provider_name else answering.provider.name
    return ModelCall.objects.create(
        organization_id=model.organization_id,
        model=answering,
        provider_name=provider_name[:100],
        model_identifier=(summary.model_identifier if summary else answering.identifier)[:200],
        user_id=user_id,
        session_id=str(session_id or "")[:64],
        status=status,
        stop_reason=(stop_reason or "")[:32],
        input_tokens=max(0, usage.input_tokens),
        output_tokens=max(0, usage.output_tokens),
        cache_read_tokens=max(0, usage.cache_read_tokens),
        cache_write_tokens=max(0, usage.cache_write_tokens),
        cost=call_cost(model=answering, usage=usage),
        latency_ms=max(0, int(latency_ms)),
        time_to_first_token_ms=summary.time_to_first_token_ms if summary else None,
        attempts=summary.attempts if summary else 1,
        fell_back_from=(summary.fell_back_from if summary else "")[:200],
        error=(error or "")[:ERROR_CHARS],
    )
