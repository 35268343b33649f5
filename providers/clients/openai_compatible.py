"""The OpenAI Chat Completions adapter (OpenAI, vLLM, Ollama, gateways, the offline simulator).

Vendor types stay in this module: messages go in as neutral dicts, events come out as `providers.clients.base`
dataclasses, and every SDK error leaves as a ModelCallError whose message never contains the API key.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import re
import socket
import ssl
import uuid
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx2
import openai
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from providers.clients.base import (
    ModelCallError,
    StreamEvent,
    TextDelta,
    ToolCallRequest,
    ToolSpec,
    TurnEnd,
    Usage,
    endpoint_host,
)
from providers.crypto import decrypt_secret

if TYPE_CHECKING:
    from providers.models import LanguageModel, Provider

CONNECT_TIMEOUT_SECONDS = 10.0
NO_KEY = "not-needed"  # local servers (vLLM, Ollama, the simulator) ignore the key, but the SDK wants one
MAX_CLIENTS_PER_LOOP = 32
VENDOR_MESSAGE_CHARS = 300

FINISH_REASONS: dict[str, str] = {
    "stop": "end_turn",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "length": "max_tokens",
    "content_filter": "content_filter",
}

TRANSPORT_ERRORS = (openai.OpenAIError, httpx2.HTTPError, httpx2.InvalidURL, OSError)

CORRELATION_HEADERS: dict[str, str] = {
    "session_id": "X-Airlock-Session-Id",
    "user_id": "X-Airlock-User-Id",
}

# One pool of clients per event loop: an HTTP connection belongs to the loop that opened it, and Celery
# workers or tests may run several loops in one process.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, OrderedDict[tuple, openai.AsyncOpenAI]] = (
    weakref.WeakKeyDictionary()
)


async def client_for(*, base_url: str, api_key: str) -> openai.AsyncOpenAI:
    """The cached SDK client of this event loop for an endpoint and key (created on first use)."""
    max_retries = int(settings.PROVIDER_MAX_RETRIES)
    timeout = float(settings.PROVIDER_TIMEOUT_SECONDS)
    key = (base_url, hashlib.sha256(api_key.encode()).hexdigest(), max_retries, timeout)
    pool = _clients.setdefault(asyncio.get_running_loop(), OrderedDict())
    client = pool.get(key)
    if client is not None:
        pool.move_to_end(key)
        return client
    client = openai.AsyncOpenAI(
        base_url=base_url,
        api_key=api_key,
        max_retries=max_retries,
        timeout=openai.Timeout(timeout, connect=min(CONNECT_TIMEOUT_SECONDS, timeout)),
    )
    pool[key] = client
    while len(pool) > MAX_CLIENTS_PER_LOOP:
        _, evicted = pool.popitem(last=False)
        with contextlib.suppress(Exception):
            await evicted.close()
    return client


def correlation_headers(correlation: dict[str, str]) -> dict[str, str]:
    """X-Airlock-* headers that let the provider's logs be joined with the audit trail."""
    headers = {}
    for key, value in correlation.items():
        if value is None or value == "":
            continue
        name = CORRELATION_HEADERS.get(key) or "X-Airlock-" + "-".join(p.capitalize() for p in key.split("_") if p)
        headers[name] = re.sub(r"[\r\n]", " ", str(value))[:200]
    return headers


def wire_tools(tools: list[ToolSpec]) -> list[dict[str, Any]]:
    """Tool specs in the Chat Completions `tools` shape."""
    return [
        {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
        for t in tools
    ]


def _arguments_json(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments or {})


def wire_messages(system: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Neutral messages in the Chat Completions shape.

    A tool call that never got its result (a turn interrupted mid-tool) gets a stand-in result, since the
    API rejects a conversation with an unanswered tool call.
    """
    wire: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    unanswered: list[str] = []

    def close_unanswered() -> None:
        """Give every call still waiting for its result a stand-in result."""
        for call_id in unanswered:
            wire.append({"role": "tool", "tool_call_id": call_id, "content": "(no result: the call was interrupted)"})
        unanswered.clear()

    for position, message in enumerate(messages):
        role = message.get("role")
        if role != "tool":
            close_unanswered()
        if role in ("user", "system"):
            wire.append({"role": role, "content": message.get("content") or ""})
        elif role == "assistant":
            calls = message.get("tool_calls") or []
            item: dict[str, Any] = {
                "role": "assistant",
                "content": message.get("content") or ("" if not calls else None),
            }
            if calls:
                item["tool_calls"] = [
                    {
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": call["name"], "arguments": _arguments_json(call.get("arguments"))},
                    }
                    for call in calls
                ]
                unanswered.extend(call["id"] for call in calls)
            wire.append(item)
        elif role == "tool":
            call_id = message.get("tool_call_id") or ""
            if call_id in unanswered:
                unanswered.remove(call_id)
            wire.append({"role": "tool", "tool_call_id": call_id, "content": message.get("content") or ""})
        else:
            raise ValueError(f"Message {position} has role {role!r}: use user, assistant or tool.")
    close_unanswered()
    return wire


class _Calls:
    """Tool calls assembled from streamed fragments, by index."""

    def __init__(self) -> None:
        self.slots: dict[int, dict[str, Any]] = {}

    def add(self, fragment: Any) -> None:
        """Merge one streamed fragment into its call."""
        index = fragment.index
        if index is None:  # some servers omit the index: a new id opens a call, fragments extend the last one
            index = len(self.slots) if fragment.id or not self.slots else max(self.slots)
        slot = self.slots.setdefault(index, {"id": "", "name": "", "arguments": []})
        if fragment.id and not slot["id"]:
            slot["id"] = fragment.id
        function = fragment.function
        if function is not None:
            if function.name and not slot["name"]:
                slot["name"] = function.name
            if function.arguments:
                slot["arguments"].append(function.arguments)

    def requests(self) -> list[ToolCallRequest]:
        """The complete calls, in index order."""
        calls = []
        for index in sorted(self.slots):
            slot = self.slots[index]
            raw = "".join(slot["arguments"])
            try:
                parsed = json.loads(raw) if raw.strip() else {}
            except ValueError:
                parsed = {}
            calls.append(
                ToolCallRequest(
                    id=slot["id"] or f"call_{uuid.uuid4().hex[:24]}",
                    name=slot["name"],
                    arguments=parsed if isinstance(parsed, dict) else {},
                    raw_arguments=raw,
                )
            )
        return calls


def _stop_reason(finish_reason: str, has_calls: bool) -> str:
    if has_calls:
        return "tool_use"  # some servers (Ollama) say "stop" after tool calls
    return FINISH_REASONS.get(finish_reason, "end_turn")


async def stream(
    *,
    provider: Provider,
    model: LanguageModel,
    system: str,
    messages: list[dict[str, Any]],
    tools: list[ToolSpec],
    correlation: dict[str, str],
) -> AsyncIterator[StreamEvent]:
    """One streamed Chat Completions call, as neutral events."""
    try:
        api_key = decrypt_secret(provider.api_key_encrypted) if provider.api_key_encrypted else ""
    except ImproperlyConfigured:
        raise ModelCallError(
            f"The stored API key of provider {provider.name!r} cannot be decrypted with AIRLOCK_ENCRYPTION_KEYS "
            "(was a key removed?): restore the key or set the provider's API key again."
        ) from None
    context = _ErrorContext(provider=provider, model=model, api_key=api_key)
    if not provider.base_url:
        raise ModelCallError(f"Provider {provider.name!r} has no base URL: set one (e.g. http://127.0.0.1:8000/v1).")
    client = await client_for(base_url=provider.base_url, api_key=api_key or NO_KEY)
    request: dict[str, Any] = {
        "model": model.identifier,
        "messages": wire_messages(system, messages),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if tools:
        request["tools"] = wire_tools(tools)
    headers = correlation_headers(correlation)
    try:
        response = await client.chat.completions.create(**request, extra_headers=headers or None)
    except TRANSPORT_ERRORS as exc:
        raise context.translate(exc, mid_stream=False) from None

    calls = _Calls()
    finish_reason: str | None = None
    usage: Any = None
    async with response:
        iterator = response.__aiter__()
        while True:
            try:
                chunk = await iterator.__anext__()
            except StopAsyncIteration:
                break
            except TRANSPORT_ERRORS as exc:
                raise context.translate(exc, mid_stream=True) from None
            except (ValueError, TypeError):
                raise ModelCallError(
                    f"{context.host} sent something that is not a Chat Completions stream: is the base URL right "
                    "(it usually ends in /v1)?"
                ) from None
            if getattr(chunk, "usage", None) is not None:
                usage = chunk.usage
            for choice in chunk.choices or []:
                if choice.index not in (0, None):
                    continue
                delta = choice.delta
                if delta is not None:
                    if delta.content:
                        yield TextDelta(delta.content)
                    for fragment in delta.tool_calls or []:
                        calls.add(fragment)
                if choice.finish_reason:
                    finish_reason = choice.finish_reason

    if finish_reason is None:
        raise ModelCallError(
            f"The answer from {context.host} ended before the model finished: try again.", retryable=True
        )
    requests = calls.requests()
    for call in requests:
        yield call
    if usage is not None:
        yield Usage(input_tokens=int(usage.prompt_tokens or 0), output_tokens=int(usage.completion_tokens or 0))
    yield TurnEnd(stop_reason=_stop_reason(finish_reason, bool(requests)))


class _ErrorContext:
    """Turns SDK and transport errors into ModelCallErrors that say what to do, without secrets."""

    def __init__(self, *, provider: Provider, model: LanguageModel, api_key: str) -> None:
        self.provider = provider
        self.model = model
        self.api_key = api_key
        self.host = endpoint_host(provider.base_url)

    def scrub(self, text: str) -> str:
        """Remove the key (and any bearer token) from a vendor's text, and keep it short."""
        if self.api_key:
            text = text.replace(self.api_key, "****")
        text = re.sub(r"(?i)bearer\s+\S+", "Bearer ****", text)
        text = " ".join(text.split())
        return text[:VENDOR_MESSAGE_CHARS] + ("..." if len(text) > VENDOR_MESSAGE_CHARS else "")

    def vendor_message(self, exc: openai.APIError) -> str:
        """The provider's own error message, scrubbed."""
        body = exc.body
        message: Any = None
        if isinstance(body, dict):
            error = body.get("error", body)
            message = error.get("message") if isinstance(error, dict) else error
            if message is None:
                message = body.get("message") or body.get("detail")
        elif isinstance(body, str):
            message = body
        return self.scrub(str(message if message else exc.message or ""))

    def translate(self, exc: BaseException, *, mid_stream: bool) -> ModelCallError:
        """The ModelCallError for an SDK or transport error."""
        if isinstance(exc, openai.APIStatusError):
            return self._status_error(exc)
        if isinstance(exc, openai.APITimeoutError):
            timeout = settings.PROVIDER_TIMEOUT_SECONDS
            return ModelCallError(
                f"Timed out waiting for {self.host} (limit {timeout:g} s): the model may be overloaded; try again, "
                "or raise AIRLOCK_PROVIDER_TIMEOUT_SECONDS.",
                retryable=True,
            )
        if isinstance(exc, httpx2.InvalidURL):
            return ModelCallError(f"The base URL of provider {self.provider.name!r} is not a valid URL: fix it.")
        if isinstance(exc, openai.APIConnectionError | OSError) or not isinstance(exc, openai.APIError):
            return self._connection_error(exc, mid_stream=mid_stream)
        detail = self.vendor_message(exc)
        return ModelCallError(f"{self.host} reported an error while answering: {detail}", retryable=True)

    def _status_error(self, exc: openai.APIStatusError) -> ModelCallError:
        status = exc.status_code
        detail = self.vendor_message(exc)
        name = self.provider.name
        identifier = self.model.identifier
        if status == 401:
            return ModelCallError(
                f"401: the API key was rejected by {self.host}: set a valid key on provider {name!r}.", status=status
            )
        if status == 403:
            return ModelCallError(
                f"403: {self.host} refused access to model {identifier!r} with this key: check the key's permissions "
                f"({detail}).",
                status=status,
            )
        if status == 404:
            return ModelCallError(
                f"404: {self.host} does not serve model {identifier!r}: check the model identifier and the provider's "
                f"base URL ({detail}).",
                status=status,
            )
        if status == 429:
            retry_after = _retry_after(exc)
            wait = f"retry after {retry_after:g} s" if retry_after is not None else "try again later"
            return ModelCallError(
                f"429: rate limited by {self.host} ({wait}): {detail}",
                status=status,
                retryable=True,
                retry_after=retry_after,
            )
        if status in (408, 409) or status >= 500:
            return ModelCallError(f"{status}: {self.host} failed to answer: {detail}", status=status, retryable=True)
        return ModelCallError(f"{status}: {self.host} rejected the request: {detail}", status=status)

    def _connection_error(self, exc: BaseException, *, mid_stream: bool) -> ModelCallError:
        causes = list(_chain(exc))
        if mid_stream:
            return ModelCallError(
                f"The connection to {self.host} dropped in the middle of the answer: try again.", retryable=True
            )
        if any(_is_refused(cause) for cause in causes):
            return ModelCallError(
                f"Connection to {self.host} refused: is the provider running / is egress allowed?", retryable=True
            )
        if any(isinstance(cause, socket.gaierror) for cause in causes):
            return ModelCallError(
                f"Cannot resolve the host of {self.host}: check the provider's base URL and this server's DNS.",
                retryable=True,
            )
        if any(isinstance(cause, ssl.SSLError) for cause in causes):
            return ModelCallError(
                f"The TLS handshake with {self.host} failed: check the URL's scheme and the server's certificate.",
            )
        reason = self.scrub(str(causes[-1]) or type(causes[-1]).__name__)
        return ModelCallError(f"Cannot connect to {self.host}: {reason}", retryable=True)


def _chain(exc: BaseException) -> list[BaseException]:
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


def _retry_after(exc: openai.APIStatusError) -> float | None:
    headers = exc.response.headers if exc.response is not None else {}
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            continue
        if seconds >= 0:
            return seconds
    return None
