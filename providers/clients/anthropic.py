"""The Anthropic Messages adapter, on the official `anthropic` SDK.

Vendor types stay in this module: neutral messages go in (tool results become `tool_result` blocks in a user
turn, assistant tool calls `tool_use` blocks), neutral events come out (text, reasoning from extended thinking,
tool calls assembled from `input_json_delta` fragments, usage with cache tokens, a stop reason), and every SDK
error leaves as a ModelCallError whose message never contains the API key.

Extended thinking with tools: the API refuses a conversation whose assistant tool-use turn does not start with
the thinking blocks it sent, signature and all. The signed `thinking` and `redacted_thinking` blocks of an answer
leave as a ReasoningState of kind "anthropic", and go back verbatim at the start of that assistant turn.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anthropic
import httpx2

from providers.clients.base import (
    CallHooks,
    ReasoningDelta,
    ReasoningState,
    StreamEvent,
    TextDelta,
    ToolCallRequest,
    ToolSpec,
    TurnEnd,
    Usage,
    ended_early,
    failed_mid_stream,
    reasoning_blocks,
    request_headers,
    summary_events,
    tool_call_from_fragments,
)
from providers.clients.openai_compatible import (
    NO_KEY,
    ErrorContext,
    decoded_stream,
    key_digest,
    pooled_client,
    provider_api_key,
    sdk_timeout,
    token_count,
)

if TYPE_CHECKING:
    from providers.models import LanguageModel, Provider

ANTHROPIC_BASE_URL = "https://api.anthropic.com"
DEFAULT_MAX_TOKENS = 4096
INTERRUPTED_RESULT = "(no result: the call was interrupted)"
REASONING_KIND = "anthropic"  # the ReasoningState kind this adapter emits and sends back
THINKING_BLOCK_TYPES = ("thinking", "redacted_thinking")

STOP_REASONS: dict[str, str] = {
    "end_turn": "end_turn",
    "stop_sequence": "end_turn",
    "pause_turn": "end_turn",
    "tool_use": "tool_use",
    "max_tokens": "max_tokens",
    "model_context_window_exceeded": "max_tokens",
    "refusal": "content_filter",
}

TRANSPORT_ERRORS = (anthropic.AnthropicError, httpx2.HTTPError, httpx2.InvalidURL, OSError)


async def client_for(*, base_url: str, api_key: str) -> anthropic.AsyncAnthropic:
    """The cached SDK client of this event loop for an endpoint and key; the SDK never retries (we do)."""
    timeout, connect = sdk_timeout()
    key = ("anthropic", base_url, key_digest(api_key), timeout)

    def make() -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            base_url=base_url,
            api_key=api_key,
            max_retries=0,
            timeout=httpx2.Timeout(timeout, connect=connect),
        )

    return await pooled_client(key, make)


def wire_tools(tools: list[ToolSpec]) -> list[dict[str, Any]]:
    """Tool specs in the Messages API `tools` shape."""
    return [{"name": t.name, "description": t.description, "input_schema": t.parameters} for t in tools]


def _tool_input(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) and arguments.strip() else {}
    except ValueError:
        parsed = {}
    return parsed if isinstance(parsed, dict) else {}


def wire_messages(system: str, messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """(system prompt, messages) in the Messages API shape.

    Turns alternate user/assistant: consecutive messages of one role are merged, tool results travel as
    `tool_result` blocks in the next user turn, a system message later in the conversation joins the system
    prompt, and a tool call that never got its result gets a stand-in result (the API rejects it otherwise).
    An assistant turn starts with the thinking blocks of its "reasoning", when that came from this protocol.
    """
    system_parts = [system] if system else []
    wire: list[dict[str, Any]] = []
    unanswered: list[str] = []

    def append(role: str, blocks: list[dict[str, Any]]) -> None:
        if wire and wire[-1]["role"] == role:
            wire[-1]["content"].extend(blocks)
        else:
            wire.append({"role": role, "content": blocks})

    def close_unanswered() -> None:
        if unanswered:
            blocks = [{"type": "tool_result", "tool_use_id": i, "content": INTERRUPTED_RESULT} for i in unanswered]
            append("user", blocks)
            unanswered.clear()

    for position, message in enumerate(messages):
        role = message.get("role")
        content = message.get("content") or ""
        if role == "system":
            if content:
                system_parts.append(content)
        elif role == "user":
            close_unanswered()
            append("user", [{"type": "text", "text": content or "(empty message)"}])
        elif role == "assistant":
            close_unanswered()
            blocks: list[dict[str, Any]] = [{"type": "text", "text": content}] if content else []
            for call in message.get("tool_calls") or []:
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call["id"],
                        "name": call["name"],
                        "input": _tool_input(call.get("arguments")),
                    }
                )
                unanswered.append(call["id"])
            if blocks:
                signed = reasoning_blocks(message, REASONING_KIND)
                append("assistant", [*(b for b in signed if b.get("type") in THINKING_BLOCK_TYPES), *blocks])
        elif role == "tool":
            call_id = message.get("tool_call_id") or ""
            if call_id in unanswered:
                unanswered.remove(call_id)
            append("user", [{"type": "tool_result", "tool_use_id": call_id, "content": content or "(no output)"}])
        else:
            raise ValueError(f"Message {position} has role {role!r}: use user, assistant or tool.")
    close_unanswered()
    return "\n\n".join(system_parts), wire


def answers_unsigned_tool_turn(wire: list[dict[str, Any]]) -> bool:
    """Whether the request answers tool calls of an assistant turn that does not start with a thinking block.

    With thinking on, the API refuses that (a turn from another vendor, or from before thinking was turned on,
    has no signed thinking to send back); with thinking off for this one request it accepts it.
    """
    if len(wire) < 2 or wire[-1]["role"] != "user":
        return False
    if not all(block.get("type") == "tool_result" for block in wire[-1]["content"]):
        return False
    assistant = wire[-2]
    if assistant["role"] != "assistant" or not any(b.get("type") == "tool_use" for b in assistant["content"]):
        return False
    return assistant["content"][0].get("type") not in THINKING_BLOCK_TYPES


def request_options(model: LanguageModel) -> dict[str, Any]:
    """max_tokens, temperature and extended thinking from the model's settings."""
    options = model.options if isinstance(model.options, dict) else {}
    max_tokens = int(model.max_output_tokens or DEFAULT_MAX_TOKENS)
    params: dict[str, Any] = {}
    budget = options.get("thinking_budget_tokens")
    if budget:
        budget = int(budget)
        # The budget counts toward max_tokens and must stay below it; the API also refuses a temperature with it.
        max_tokens = max(max_tokens, budget + DEFAULT_MAX_TOKENS)
        params["thinking"] = {"type": "enabled", "budget_tokens": budget}
    elif options.get("temperature") is not None:
        # This SDK no longer types `temperature` (newer models refuse sampling parameters): send it as is.
        params["extra_body"] = {"temperature": float(options["temperature"])}
    params["max_tokens"] = max_tokens
    return params


class _Blocks:
    """Tool-use blocks assembled from `input_json_delta` fragments, by content block index."""

    def __init__(self) -> None:
        self.tools: dict[int, dict[str, Any]] = {}

    def start(self, index: int, *, call_id: str, name: str) -> None:
        """Open a tool_use block."""
        self.tools[index] = {"id": call_id, "name": name, "fragments": []}

    def extend(self, index: int, partial_json: str) -> None:
        """Add one fragment of a tool_use block's input."""
        slot = self.tools.get(index)
        if slot is not None and partial_json:
            slot["fragments"].append(partial_json)

    def requests(self) -> list[ToolCallRequest]:
        """The complete calls, in block order."""
        calls = []
        for index in sorted(self.tools):
            slot = self.tools[index]
            calls.append(
                tool_call_from_fragments(
                    call_id=slot["id"] or f"toolu_{uuid.uuid4().hex[:24]}",
                    name=slot["name"],
                    fragments=slot["fragments"],
                )
            )
        return calls


class _Thinking:
    """The answer's thinking and redacted_thinking blocks, by content block index, to be sent back verbatim."""

    def __init__(self) -> None:
        self.slots: dict[int, dict[str, Any]] = {}

    def start(self, index: int, *, text: str, signature: str) -> None:
        """Open a thinking block (its text may start in the opening event)."""
        self.slots[index] = {"parts": [text] if text else [], "signature": signature}

    def extend(self, index: int, text: str) -> None:
        """Add one `thinking_delta` to a thinking block."""
        slot = self.slots.get(index)
        if slot is None:
            slot = self.slots[index] = {"parts": [], "signature": ""}
        slot["parts"].append(text)

    def sign(self, index: int, signature: str) -> None:
        """Take a thinking block's `signature_delta`."""
        slot = self.slots.get(index)
        if slot is not None and "data" not in slot:
            slot["signature"] = signature

    def redacted(self, index: int, data: str) -> None:
        """Keep a redacted_thinking block (its encrypted `data` arrives whole in the opening event)."""
        self.slots[index] = {"data": data}

    def state(self) -> ReasoningState | None:
        """The blocks in answer order, as the API wants them back; unsigned thinking (a cut stream) is left out."""
        blocks: list[dict[str, Any]] = []
        for index in sorted(self.slots):
            slot = self.slots[index]
            if "data" in slot:
                blocks.append({"type": "redacted_thinking", "data": slot["data"]})
            elif slot["signature"]:
                blocks.append({"type": "thinking", "thinking": "".join(slot["parts"]), "signature": slot["signature"]})
        return ReasoningState(kind=REASONING_KIND, blocks=tuple(blocks)) if blocks else None


class _Tokens:
    """Usage as it arrives: message_start gives the input, message_delta the (cumulative) output."""

    def __init__(self) -> None:
        self.seen = False
        self.values = {
            "input_tokens": 0,
            "output_tokens": 0,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        }

    def update(self, usage: Any) -> None:
        """Take every count the event reports (the wire's usage object)."""
        if not isinstance(usage, dict):
            return
        self.seen = True
        for name in self.values:
            value = usage.get(name)
            if value is not None:
                self.values[name] = token_count(value)

    def usage(self) -> Usage:
        """The neutral Usage."""
        v = self.values
        return Usage(
            input_tokens=v["input_tokens"],
            output_tokens=v["output_tokens"],
            cache_read_tokens=v["cache_read_input_tokens"],
            cache_write_tokens=v["cache_creation_input_tokens"],
        )


# Request options beyond the headers: the tracing span names the SDK's messages.create() passes (keys the
# SDK reads but does not type).
_OPTIONS: dict[str, Any] = {"span_name": "anthropic.messages.create", "span_route": "/v1/messages"}


def _text(mapping: dict[str, Any], key: str) -> str:
    """A text field of a streamed event ("" when absent); TypeError (not a Messages stream) when not text."""
    value = mapping.get(key)
    if value is None:
        return ""
    if type(value) is not str:
        raise TypeError(f"{key} is not text")
    return value


def _index(event: dict[str, Any]) -> int:
    """A content block's index; TypeError (not a Messages stream) when it is missing or not an integer."""
    index = event.get("index")
    if type(index) is not int:
        raise TypeError("index is not an integer")
    return index


async def stream(
    *,
    provider: Provider,
    model: LanguageModel,
    system: str,
    messages: list[dict[str, Any]],
    tools: list[ToolSpec],
    correlation: dict[str, str],
    hooks: CallHooks | None = None,
) -> AsyncIterator[StreamEvent]:
    """One streamed Messages API call, as neutral events."""
    api_key = provider_api_key(provider)
    base_url = provider.base_url or ANTHROPIC_BASE_URL
    context = ErrorContext(
        provider=provider,
        model=model,
        api_key=api_key,
        base_url=base_url,
        sdk=anthropic,
        protocol="Messages API",
        base_url_hint="for Anthropic it has no /v1 at the end",
    )
    client = await client_for(base_url=base_url, api_key=api_key or NO_KEY)
    system_prompt, wire = wire_messages(system, messages)
    options = request_options(model)
    if "thinking" in options and answers_unsigned_tool_turn(wire):
        del options["thinking"]  # no signed thinking to send back: the API accepts the turn only without thinking
    request: dict[str, Any] = {"model": model.identifier, "messages": wire, "stream": True, **options}
    if system_prompt:
        request["system"] = system_prompt
    if tools:
        request["tools"] = wire_tools(tools)
    request.update(request.pop("extra_body", None) or {})
    response = await decoded_stream(
        client,
        context=context,
        path="/v1/messages",
        body=request,
        options=_OPTIONS | {"headers": request_headers(provider, correlation)},
        errors=TRANSPORT_ERRORS,
    )

    blocks = _Blocks()
    thinking = _Thinking()
    tokens = _Tokens()
    stop_reason: str | None = None
    finished = False
    async with response:
        iterator = response.__aiter__()
        while True:
            try:
                event = await iterator.__anext__()
            except StopAsyncIteration:
                break
            except TRANSPORT_ERRORS as exc:
                raise failed_mid_stream(hooks, context.translate(exc, mid_stream=True)) from None
            except (ValueError, TypeError):  # data that is not JSON
                raise failed_mid_stream(hooks, context.not_a_stream()) from None
            if type(event) is not dict:
                raise failed_mid_stream(hooks, context.not_a_stream())
            try:
                kind = event.get("type")
                if kind == "content_block_delta":
                    delta = event["delta"]
                    delta_kind = delta.get("type")
                    if delta_kind == "text_delta":
                        text = _text(delta, "text")
                        if text:
                            yield TextDelta(text)
                    elif delta_kind == "thinking_delta":
                        text = _text(delta, "thinking")
                        if text:
                            thinking.extend(_index(event), text)
                            yield ReasoningDelta(text)
                    elif delta_kind == "input_json_delta":
                        blocks.extend(_index(event), _text(delta, "partial_json"))
                    elif delta_kind == "signature_delta":
                        thinking.sign(_index(event), _text(delta, "signature"))
                elif kind == "content_block_start":
                    block = event["content_block"]
                    block_kind = block.get("type")
                    if block_kind == "tool_use":
                        blocks.start(_index(event), call_id=_text(block, "id"), name=_text(block, "name"))
                    elif block_kind == "text":
                        text = _text(block, "text")
                        if text:
                            yield TextDelta(text)
                    elif block_kind == "thinking":
                        text = _text(block, "thinking")
                        thinking.start(_index(event), text=text, signature=_text(block, "signature"))
                        if text:
                            yield ReasoningDelta(text)
                    elif block_kind == "redacted_thinking":
                        thinking.redacted(_index(event), _text(block, "data"))
                elif kind == "message_start":
                    tokens.update((event.get("message") or {}).get("usage"))
                elif kind == "message_delta":
                    tokens.update(event.get("usage"))
                    reason = (event.get("delta") or {}).get("stop_reason")
                    if reason:
                        stop_reason = str(reason)
                elif kind == "message_stop":
                    finished = True
            except (AttributeError, TypeError, KeyError):  # a field missing or of the wrong shape
                raise failed_mid_stream(hooks, context.not_a_stream()) from None

    if not finished and stop_reason is None:
        raise ended_early(hooks, context.host)
    requests = blocks.requests()
    for call in requests:
        yield call
    state = thinking.state()
    if state is not None:
        yield state
    if tokens.seen:
        yield tokens.usage()
    reason = STOP_REASONS.get(stop_reason or "", "end_turn")
    for event in summary_events(hooks):
        yield event
    yield TurnEnd(stop_reason="tool_use" if requests and reason != "max_tokens" else reason)
