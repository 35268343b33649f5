"""Streaming model clients: `stream_turn` picks the adapter for the provider's wire protocol, retries, falls back."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from providers.clients.base import (
    STOP_REASONS,
    CallHooks,
    CallSummary,
    ModelCallError,
    ReasoningDelta,
    ReasoningState,
    StreamEvent,
    TextDelta,
    ToolCallRequest,
    ToolSpec,
    TurnEnd,
    Usage,
)
from providers.clients.retry import RetryPolicy, stream_with_retries

if TYPE_CHECKING:
    from providers.models import LanguageModel, Provider

__all__ = [
    "STOP_REASONS",
    "CallSummary",
    "ModelCallError",
    "ReasoningDelta",
    "ReasoningState",
    "RetryPolicy",
    "StreamEvent",
    "TextDelta",
    "ToolCallRequest",
    "ToolSpec",
    "TurnEnd",
    "Usage",
    "stream_turn",
]

# provider kind -> module with `async def stream(*, provider, model, system, messages, tools, correlation)`
ADAPTERS: dict[str, str] = {
    "openai-compatible": "providers.clients.openai_compatible",
    "openai": "providers.clients.openai_compatible",
    "azure-openai": "providers.clients.openai_compatible",
    "anthropic": "providers.clients.anthropic",
    "google": "providers.clients.google",
    "bedrock": "providers.clients.bedrock",
}


async def _provider_of(model: LanguageModel) -> Provider:
    """The model's provider, loaded without blocking the event loop when it was not selected with the model."""
    from providers.models import LanguageModel, Provider

    if LanguageModel.provider.is_cached(model):
        return model.provider
    provider = await Provider.objects.aget(pk=model.provider_id)
    LanguageModel.provider.field.set_cached_value(model, provider)
    return provider


async def _fallback_of(model: LanguageModel) -> LanguageModel | None:
    """The model's enabled fallback in the same organization (None when there is none)."""
    from providers.models import LanguageModel

    if not model.fallback_id or model.fallback_id == model.pk:
        return None
    if LanguageModel.fallback.is_cached(model):
        fallback = model.fallback
    else:
        fallback = await LanguageModel.objects.select_related("provider").filter(pk=model.fallback_id).afirst()
    if fallback is None or not fallback.is_enabled or fallback.organization_id != model.organization_id:
        return None
    return fallback


def stream_turn(
    *,
    model: LanguageModel,
    system: str,
    messages: list[dict[str, Any]],
    tools: list[ToolSpec],
    correlation: dict[str, str] | None = None,
) -> AsyncIterator[StreamEvent]:
    """Call the model: ReasoningDelta*/TextDelta*, ToolCallRequest*, ReasoningState?, Usage, CallSummary, TurnEnd.

    A ReasoningState, when the answer has one, belongs with the assistant message as its "reasoning" (see
    `providers.clients.base`): the next call sends it back to the same kind of vendor and drops it for any other.
    Retries retryable failures while nothing has been yielded, then tries the model's fallback; on final failure
    raises ModelCallError with `.attempts` set. Returns a `TurnStream`: use it with `async for`, or
    `aclosing(...)` to close it early; from the first token on, its events come straight from the adapter.
    """
    headers = correlation or {}

    async def open_stream(target: LanguageModel, hooks: CallHooks) -> tuple[Provider, AsyncIterator[StreamEvent]]:
        provider = await _provider_of(target)
        module_name = ADAPTERS.get(provider.kind)
        if module_name is None:
            raise ModelCallError(
                f"Provider {provider.name!r} has kind {provider.kind!r}, which this Airlock cannot call: "
                f"use one of {sorted(ADAPTERS)}."
            )
        try:
            adapter = importlib.import_module(module_name)
        except ImportError:
            raise ModelCallError(
                f"Provider {provider.name!r} has kind {provider.kind!r}, whose client is not installed in this "
                "Airlock: pick another provider kind or upgrade Airlock."
            ) from None
        events = adapter.stream(
            provider=provider,
            model=target,
            system=system,
            messages=messages,
            tools=tools,
            correlation=headers,
            hooks=hooks,
        )
        return provider, events

    return stream_with_retries(model=model, open_stream=open_stream, load_fallback=_fallback_of)
