"""The one interface the agent loop sees: neutral stream events, tool specs and a single error type.

No vendor type crosses this boundary. Messages going in are plain dicts:
    {"role": "user" | "assistant" | "tool", "content": str,
     "tool_calls": [{"id": str, "name": str, "arguments": dict}],   # assistant only, optional
     "tool_call_id": str}                                           # tool only
Events coming out, in this order: TextDelta*, ToolCallRequest*, Usage (when the provider reports it), TurnEnd.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

StopReason = Literal["end_turn", "tool_use", "max_tokens", "content_filter"]
STOP_REASONS: tuple[str, ...] = ("end_turn", "tool_use", "max_tokens", "content_filter")


@dataclass(frozen=True)
class TextDelta:
    """A piece of the assistant's text, as it arrives."""

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
class Usage:
    """Tokens the call consumed, as the provider reported them."""

    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class TurnEnd:
    """The model finished this call; `stop_reason` is one of STOP_REASONS."""

    stop_reason: str


StreamEvent = TextDelta | ToolCallRequest | Usage | TurnEnd


@dataclass(frozen=True)
class ToolSpec:
    """A tool offered to the model; `parameters` is a JSON schema of its arguments."""

    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


class ModelCallError(Exception):
    """A model call failed; the message says what to do about it and never contains a secret.

    `status` is the provider's HTTP status when it answered, `retryable` whether trying again later may help,
    `retry_after` the seconds the provider asked to wait, when it said so.
    """

    def __init__(
        self, message: str, *, status: int | None = None, retryable: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.message


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
