"""Retries, backoff and fallback around one model call: ours, not the SDKs' (they run with max_retries=0).

A failed attempt is retried when the error is retryable (429, 5xx, connection errors, timeouts), after an
exponential backoff with full jitter, or after the provider's Retry-After (capped), at most
PROVIDER_MAX_RETRIES times, and only while nothing has reached the caller: a half-streamed answer is never
replayed. When the model's attempts are exhausted and it has an enabled fallback model, the fallback is called
the same way, once. A CallSummary is yielded just before TurnEnd.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings

from providers.clients.base import (
    CallSummary,
    ModelCallError,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCallRequest,
    TurnEnd,
)

if TYPE_CHECKING:
    from providers.models import LanguageModel, Provider

DEFAULT_BASE_SECONDS = 0.5
DEFAULT_MAX_SECONDS = 20.0

# Opens one attempt: the model's provider and the adapter's event stream.
Opener = Callable[["LanguageModel"], Awaitable[tuple["Provider", AsyncIterator[StreamEvent]]]]
FallbackLoader = Callable[["LanguageModel"], Awaitable["LanguageModel | None"]]

_FIRST_TOKEN_EVENTS = (TextDelta, ReasoningDelta, ToolCallRequest)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait: retries after the first attempt, backoff base and cap in seconds."""

    max_retries: int
    base_seconds: float
    max_seconds: float

    @classmethod
    def from_settings(cls) -> RetryPolicy:
        """PROVIDER_MAX_RETRIES, PROVIDER_RETRY_BASE_SECONDS (0.5) and PROVIDER_RETRY_MAX_SECONDS (20)."""
        return cls(
            max_retries=max(0, int(getattr(settings, "PROVIDER_MAX_RETRIES", 2))),
            base_seconds=max(0.0, float(getattr(settings, "PROVIDER_RETRY_BASE_SECONDS", DEFAULT_BASE_SECONDS))),
            max_seconds=max(0.0, float(getattr(settings, "PROVIDER_RETRY_MAX_SECONDS", DEFAULT_MAX_SECONDS))),
        )

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `retry` (1 for the first): Retry-After when given, else full jitter."""
        if retry_after is not None:
            return min(max(0.0, retry_after), self.max_seconds)
        return random.uniform(0.0, min(self.max_seconds, self.base_seconds * 2 ** (retry - 1)))


class _Call:
    """What happened so far across attempts."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.attempts = 0
        self.yielded = False
        self.first_token_ms: int | None = None
        self.provider_name = ""

    def saw(self, event: StreamEvent) -> None:
        """Note that an event reached the caller."""
        self.yielded = True
        if self.first_token_ms is None and isinstance(event, _FIRST_TOKEN_EVENTS):
            self.first_token_ms = int((time.monotonic() - self.started) * 1000)


def _with_attempts(exc: ModelCallError, attempts: int, message: str | None = None) -> ModelCallError:
    return ModelCallError(
        message or exc.message,
        status=exc.status,
        retryable=exc.retryable,
        retry_after=exc.retry_after,
        attempts=attempts,
    )


async def stream_with_retries(
    *,
    model: LanguageModel,
    open_stream: Opener,
    load_fallback: FallbackLoader,
    policy: RetryPolicy | None = None,
) -> AsyncIterator[StreamEvent]:
    """The model's events with retries and fallback, a CallSummary just before TurnEnd; raise ModelCallError.

    One generator for the whole call (retries and fallback included): every event crosses a single extra hop.
    """
    policy = policy or RetryPolicy.from_settings()
    call = _Call()
    target = model
    fell_back_from = ""
    first_error: ModelCallError | None = None
    while True:
        retries = 0
        while True:
            call.attempts += 1
            try:
                provider, events = await open_stream(target)
                call.provider_name = provider.name
                pending_first_token = True
                async with aclosing(events):
                    async for event in events:
                        if pending_first_token:
                            call.saw(event)
                            pending_first_token = call.first_token_ms is None
                        if type(event) is TurnEnd:
                            yield CallSummary(
                                attempts=call.attempts,
                                model_id=target.pk,
                                model_identifier=target.identifier,
                                provider_name=call.provider_name,
                                fell_back_from=fell_back_from,
                                time_to_first_token_ms=call.first_token_ms,
                            )
                        yield event
                return
            except ModelCallError as exc:
                error = exc
            if call.yielded:
                note = " Part of the answer had already arrived, so Airlock did not retry it automatically."
                raise _with_attempts(error, call.attempts, error.message + note)
            if not error.retryable or retries >= policy.max_retries:
                break
            retries += 1
            await asyncio.sleep(policy.delay(retries, error.retry_after))
        suffix = f" (gave up after {retries + 1} attempts)" if retries else ""
        if first_error is not None:
            message = f"{first_error.message} The fallback model {target.identifier!r} failed too: {error.message}"
            raise _with_attempts(error, call.attempts, message + suffix)
        first_error = _with_attempts(error, call.attempts, error.message + suffix)
        fallback = await load_fallback(model)
        if fallback is None:
            raise first_error
        target, fell_back_from = fallback, model.identifier
