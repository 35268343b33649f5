"""The one interface the agent loop sees: neutral stream events, tool specs and a single error type.

No vendor type crosses this boundary. Messages going in are plain dicts:
    {"role": "user" | "assistant" | "tool", "content": str,
     "tool_calls": [{"id": str, "name": str, "arguments": dict}],   # assistant only, optional
     "reasoning": {"kind": str, "blocks": [dict, ...]},             # assistant only, optional (ReasoningState)
     "tool_call_id": str}                                           # tool only
Events coming out, in this order: ReasoningDelta* and TextDelta* (interleaved as the vendor sends them),
ToolCallRequest*, ReasoningState (when the vendor sent opaque reasoning to carry), Usage (when the provider
reports it), CallSummary (from `stream_turn` only), TurnEnd.
"""

from __future__ import annotations

import errno
import json
import re
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

StopReason = Literal["end_turn", "tool_use", "max_tokens", "content_filter"]
STOP_REASONS: tuple[str, ...] = ("end_turn", "tool_use", "max_tokens", "content_filter")


# The deltas are the one event per streamed chunk, so they skip the frozen dataclass __init__ (one
# object.__setattr__ call per field, about half of a delta's cost): same fields, equality, hash and repr, and
# still immutable after construction.


# The two events made once per streamed token are slotted, not frozen: a frozen dataclass pays for its
# immutability on every construction (a third of Airlock's per-token cost); nothing mutates them.
@dataclass(slots=True)
class TextDelta:
    """A piece of the assistant's text, as it arrives."""

    text: str


@dataclass(slots=True)
class ReasoningDelta:
    """A piece of the model's reasoning ("thinking"), where the vendor sends it; not part of the answer."""

    text: str


@dataclass(frozen=True)
class ToolCallRequest:
    """A complete tool call the model asks for.

    `arguments` is the parsed JSON object; when the model sent something that is not a JSON object,
    `arguments` is {} and `raw_arguments` holds what it sent, so the loop can tell the model what went wrong.
    """

    id: str
    name: str
    arguments: dict[str, Any]
    raw_arguments: str

    @property
    def arguments_valid(self) -> bool:
        """Whether the raw arguments were a JSON object (an empty string counts as {})."""
        return bool(self.arguments) or self.raw_arguments.strip() in ("", "{}")


@dataclass(frozen=True)
class ReasoningState:
    """The vendor's opaque reasoning of one answer, to be sent back verbatim with that assistant turn.

    Thinking models sign their reasoning (Anthropic and Bedrock `thinking` blocks with a `signature` or encrypted
    `redacted_thinking`, Gemini `thought_signature`s on parts) and refuse a tool-using conversation whose earlier
    assistant turn lost it. `kind` names the wire protocol that produced it ("anthropic", "bedrock", "google");
    `blocks` are JSON-ready dicts in that protocol's own terms, read only by its adapter. Yielded at most once per
    call, after the ToolCallRequests. The caller stores `as_message_field()` as the assistant message's
    "reasoning"; an adapter puts back only the blocks of its own kind (no other vendor can verify them).
    """

    kind: str
    blocks: tuple[dict[str, Any], ...]

    def as_message_field(self) -> dict[str, Any]:
        """The value of the assistant message's "reasoning" key (JSON-ready)."""
        return {"kind": self.kind, "blocks": [dict(block) for block in self.blocks]}


def reasoning_blocks(message: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """The reasoning blocks an assistant message carries for the wire protocol `kind` ([] for any other kind)."""
    state = message.get("reasoning")
    if not isinstance(state, dict) or state.get("kind") != kind:
        return []
    blocks = state.get("blocks")
    return [block for block in blocks if isinstance(block, dict)] if isinstance(blocks, list) else []


@dataclass(frozen=True)
class Usage:
    """Tokens the call consumed, as the provider reported them.

    `input_tokens` counts the input billed at the full input price: adapters subtract the tokens read from or
    written to the prompt cache, which are counted in `cache_read_tokens` / `cache_write_tokens`.
    """

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


@dataclass(frozen=True)
class TurnEnd:
    """The model finished this call; `stop_reason` is one of STOP_REASONS."""

    stop_reason: str


@dataclass(frozen=True)
class CallSummary:
    """How a call went, after retries and fallback: yielded by `stream_turn` just before TurnEnd.

    `attempts` counts every request sent (to the fallback model too); `model_id` / `model_identifier` /
    `provider_name` name the model that answered; `fell_back_from` is the identifier of the model that failed
    first ("" when the first model answered); `time_to_first_token_ms` is measured from the start of the call
    to the first text, reasoning or tool call (None when the answer had none).
    """

    attempts: int
    model_id: int
    model_identifier: str
    provider_name: str
    fell_back_from: str = ""
    time_to_first_token_ms: int | None = None


StreamEvent = TextDelta | ReasoningDelta | ToolCallRequest | ReasoningState | Usage | CallSummary | TurnEnd


@dataclass(frozen=True)
class ToolSpec:
    """A tool offered to the model; `parameters` is a JSON schema of its arguments."""

    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


CORRELATION_HEADERS: dict[str, str] = {"session_id": "X-Airlock-Session-Id", "user_id": "X-Airlock-User-Id"}
HEADER_VALUE_CHARS = 500


def provider_headers(provider: Any) -> dict[str, str]:
    """The provider's extra headers (gateways), names reduced to HTTP token characters, values to one line."""
    extra = provider.extra_headers if isinstance(provider.extra_headers, dict) else {}
    headers: dict[str, str] = {}
    for name, value in extra.items():
        name = re.sub(r"[^A-Za-z0-9!#$%&'*+.^_`|~-]", "", str(name))
        if name and value is not None:
            headers[name] = re.sub(r"[\r\n]", " ", str(value))[:HEADER_VALUE_CHARS]
    return headers


def correlation_headers(correlation: dict[str, str]) -> dict[str, str]:
    """X-Airlock-* headers that let the provider's or a gateway's logs be joined with the audit trail."""
    headers = {}
    for key, value in correlation.items():
        if value is None or value == "":
            continue
        name = CORRELATION_HEADERS.get(key) or "X-Airlock-" + "-".join(p.capitalize() for p in key.split("_") if p)
        headers[name] = re.sub(r"[\r\n]", " ", str(value))[:200]
    return headers


def request_headers(provider: Any, correlation: dict[str, str]) -> dict[str, str]:
    """Headers for every model call: the provider's extra headers, then the correlation headers."""
    return provider_headers(provider) | correlation_headers(correlation)


class CallHooks(Protocol):
    """What `stream_turn` gives an adapter as `hooks=`: the CallSummary to yield before TurnEnd, and the error
    to raise once events went out (with the attempts made and the note that the answer was not retried)."""

    def summary(self) -> CallSummary:
        """The CallSummary to yield just before TurnEnd."""

    def failed(self, error: ModelCallError) -> ModelCallError:
        """The error to raise for a failure in the middle of the stream."""


def failed_mid_stream(hooks: CallHooks | None, error: ModelCallError) -> ModelCallError:
    """An adapter's error once it has yielded events: explained by the hooks when `stream_turn` gave some."""
    return error if hooks is None else hooks.failed(error)


def ended_early(hooks: CallHooks | None, host: str) -> ModelCallError:
    """An adapter's error for a stream that stopped before the model said it had finished (worth retrying)."""
    return failed_mid_stream(
        hooks, ModelCallError(f"The answer from {host} ended before the model finished: try again.", retryable=True)
    )


def summary_events(hooks: CallHooks | None) -> tuple[StreamEvent, ...]:
    """What an adapter yields just before its TurnEnd: the call's summary when `stream_turn` gave hooks."""
    return () if hooks is None else (hooks.summary(),)


class ModelCallError(Exception):
    """A model call failed; the message says what to do about it and never contains a secret.

    `status` is the provider's HTTP status when it answered, `retryable` whether trying again later may help,
    `retry_after` the seconds the provider asked to wait, when it said so; `attempts` how many requests were
    sent before giving up (set by `stream_turn`).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.attempts = attempts

    def __str__(self) -> str:
        return self.message


def tool_call_from_fragments(*, call_id: str, name: str, fragments: list[str]) -> ToolCallRequest:
    """A tool call assembled from the partial JSON a stream sent; arguments that are not an object become {}.

    `raw_arguments` keeps exactly what the model sent, so a malformed call can still be shown and audited.
    """
    raw = "".join(fragments)
    try:
        parsed = json.loads(raw) if raw.strip() else {}
    except ValueError:
        parsed = {}
    return ToolCallRequest(
        id=call_id, name=name, arguments=parsed if isinstance(parsed, dict) else {}, raw_arguments=raw
    )


def http_status_error(
    *,
    status: int,
    host: str,
    provider_name: str,
    model_identifier: str,
    detail: str,
    retry_after: float | None = None,
    key_advice: str = "set a valid key",
    access_advice: str = "check the key's permissions",
    rate_limit_words: str = "rate limited by",
) -> ModelCallError:
    """What an HTTP error status from a vendor means for an operator, the same way for every adapter.

    `detail` must already be scrubbed of secrets; 429, 408, 409 and 5xx are retryable.
    """
    if status == 401:
        return ModelCallError(
            f"401: the API key was rejected by {host}: {key_advice} on provider {provider_name!r}.", status=status
        )
    if status == 403:
        return ModelCallError(
            f"403: {host} refused access to model {model_identifier!r} with this key: {access_advice} ({detail}).",
            status=status,
        )
    if status == 404:
        return ModelCallError(
            f"404: {host} does not serve model {model_identifier!r}: check the model identifier and the provider's "
            f"base URL ({detail}).",
            status=status,
        )
    if status == 429:
        wait = f"retry after {retry_after:g} s" if retry_after is not None else "try again later"
        return ModelCallError(
            f"429: {rate_limit_words} {host} ({wait}): {detail}", status=status, retryable=True, retry_after=retry_after
        )
    if status in (408, 409) or status >= 500:
        return ModelCallError(f"{status}: {host} failed to answer: {detail}", status=status, retryable=True)
    return ModelCallError(f"{status}: {host} rejected the request: {detail}", status=status or None)


def connection_error(exc: BaseException, *, host: str, mid_stream: bool, scrub: Callable[[str], str]) -> ModelCallError:
    """What a failed connection means for an operator (refused, DNS, TLS, dropped mid-answer), for every adapter.

    `scrub` removes secrets from the lowest cause's text before it is shown.
    """
    causes = exception_chain(exc)
    if mid_stream:
        return ModelCallError(
            f"The connection to {host} dropped in the middle of the answer: try again.", retryable=True
        )
    if any(_is_refused(cause) for cause in causes):
        return ModelCallError(
            f"Connection to {host} refused: is the provider running / is egress allowed?", retryable=True
        )
    if any(isinstance(cause, socket.gaierror) for cause in causes):
        return ModelCallError(
            f"Cannot resolve the host of {host}: check the provider's base URL and this server's DNS.", retryable=True
        )
    if any(isinstance(cause, ssl.SSLError) for cause in causes):
        return ModelCallError(
            f"The TLS handshake with {host} failed: check the URL's scheme and the server's certificate."
        )
    reason = scrub(str(causes[-1]) or type(causes[-1]).__name__)
    return ModelCallError(f"Cannot connect to {host}: {reason}", retryable=True)


def exception_chain(exc: BaseException) -> list[BaseException]:
    """An exception and its causes/contexts, outermost first (each once)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _is_refused(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionRefusedError):
        return True
    if isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED:
        return True
    return "connection refused" in str(exc).lower() or "connect call failed" in str(exc).lower()


def endpoint_host(base_url: str) -> str:
    """The host[:port] of a base URL, for messages (never the path, query or credentials)."""
    try:
        parts = urlsplit(base_url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        if not host:
            return "the provider"
        return f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return "the provider"
