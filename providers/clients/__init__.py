"""Streaming model clients: `stream_turn` picks the adapter for the provider's wire protocol."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from providers.clients.base import (
    STOP_REASONS,
    ModelCallError,
    StreamEvent,
    TextDelta,
    ToolCallRequest,
    ToolSpec,
    TurnEnd,
    Usage,
)

if TYPE_CHECKING:
    from providers.models import LanguageModel, Provider

__all__ = [
    "STOP_REASONS",
    "ModelCallError",
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


async def stream_turn(
    *,
    model: LanguageModel,
    system: str,
    messages: list[dict[str, Any]],
    tools: list[ToolSpec],
    correlation: dict[str, str] | None = None,
) -> AsyncIterator[StreamEvent]:
    """Call the model once and yield TextDelta*, ToolCallRequest*, Usage, then TurnEnd; raise ModelCallError."""
    provider = await _provider_of(model)
    module_name = ADAPTERS.get(provider.kind)
    if module_name is None:
        raise ModelCallError(
            f"Provider {provider.name!r} has kind {provider.kind!r}, which this Airlock cannot call: "
            f"use one of {sorted(ADAPTERS)}."
        )
    adapter = importlib.import_module(module_name)
    events = adapter.stream(
        provider=provider, model=model, system=system, messages=messages, tools=tools, correlation=correlation or {}
    )
    async with aclosing(events):
        async for event in events:
            yield event
