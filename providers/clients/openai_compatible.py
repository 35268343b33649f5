"""The OpenAI Chat Completions adapter (OpenAI, Azure OpenAI, vLLM, Ollama, gateways, the offline simulator).

Vendor types stay in this module: messages go in as neutral dicts, events come out as `providers.clients.base`
dataclasses, and every SDK error leaves as a ModelCallError whose message never contains the API key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import uuid
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

import httpx2
import openai
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from portal.crypto import decrypt_secret
from providers.clients.base import (
    CallHooks,
    ModelCallError,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCallRequest,
    ToolSpec,
    TurnEnd,
    Usage,
    connection_error,
    ended_early,
    endpoint_host,
    failed_mid_stream,
    http_status_error,
    request_headers,
    summary_events,
    tool_call_from_fragments,
)

if TYPE_CHECKING:
    from providers.models import LanguageModel, Provider

CONNECT_TIMEOUT_SECONDS = 10.0
NO_KEY = "not-needed"  # local servers (vLLM, Ollama, the simulator) ignore the key, but the SDK wants one
MAX_CLIENTS_PER_LOOP = 32
VENDOR_MESSAGE_CHARS = 300
OPENAI_BASE_URL = "https://api.openai.com/v1"

FINISH_REASONS: dict[str, str] = {
    "stop": "end_turn",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "length": "max_tokens",
    "content_filter": "content_filter",
}

TRANSPORT_ERRORS = (openai.OpenAIError, httpx2.HTTPError, httpx2.InvalidURL, OSError)

# One pool of clients per event loop: an HTTP connection belongs to the loop that opened it, and Celery
# workers or tests may run several loops in one process.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, OrderedDict[tuple, Any]] = weakref.WeakKeyDictionary()


def key_digest(api_key: str) -> str:
    """A digest of a key, to tell pooled clients apart without keeping the key in the pool's keys."""
    return hashlib.sha256(api_key.encode()).hexdigest()


async def pooled_client(key: tuple, factory: Callable[[], Any]) -> Any:
    """The cached SDK client of this event loop under `key`, made by `factory` on first use (LRU-bounded)."""
    pool = _clients.setdefault(asyncio.get_running_loop(), OrderedDict())
    client = pool.get(key)
    if client is not None:
        pool.move_to_end(key)
        return client
    client = factory()
    pool[key] = client
    while len(pool) > MAX_CLIENTS_PER_LOOP:
        _, evicted = pool.popitem(last=False)
        with contextlib.suppress(Exception):
            await evicted.close()
    return client


def sdk_timeout() -> tuple[float, float]:
    """(read timeout, connect timeout) in seconds, from settings."""
    timeout = float(settings.PROVIDER_TIMEOUT_SECONDS)
    return timeout, min(CONNECT_TIMEOUT_SECONDS, timeout)


async def client_for(
    *, base_url: str, api_key: str, kind: str = "openai-compatible", api_version: str = ""
) -> openai.AsyncOpenAI:
    """The cached SDK client of this event loop for an endpoint and key; the SDK never retries (we do)."""
    timeout, connect = sdk_timeout()
    key = ("openai", kind, base_url, api_version, key_digest(api_key), timeout)

    def make() -> openai.AsyncOpenAI:
        if kind == "azure-openai":
            return openai.AsyncAzureOpenAI(
                azure_endpoint=base_url,
                api_version=api_version,
                api_key=api_key,
                max_retries=0,
                timeout=openai.Timeout(timeout, connect=connect),
            )
        return openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key, max_retries=0, timeout=openai.Timeout(timeout, connect=connect)
        )

    return await pooled_client(key, make)


def provider_api_key(provider: Provider) -> str:
    """The provider's decrypted API key ("" when none is stored); a ModelCallError when it cannot be decrypted."""
    try:
        return decrypt_secret(provider.api_key_encrypted) if provider.api_key_encrypted else ""
    except ImproperlyConfigured:
        raise ModelCallError(
            f"The stored API key of provider {provider.name!r} cannot be decrypted with AIRLOCK_ENCRYPTION_KEYS "
            "(was a key removed?): restore the key or set the provider's API key again."
        ) from None


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
    """Tool calls assembled from streamed fragments (the wire's JSON objects), by index."""

    def __init__(self) -> None:
        self.slots: dict[int, dict[str, Any]] = {}

    def add(self, fragment: dict[str, Any]) -> None:
        """Merge one streamed fragment into its call."""
        index = fragment.get("index")
        call_id = fragment.get("id")
        if not isinstance(index, int):  # some servers omit the index: a new id opens a call, others extend the last
            index = len(self.slots) if call_id or not self.slots else max(self.slots)
        slot = self.slots.setdefault(index, {"id": "", "name": "", "arguments": []})
        if call_id and not slot["id"]:
            slot["id"] = str(call_id)
        function = fragment.get("function")
        if isinstance(function, dict):
            name = function.get("name")
            if name and not slot["name"]:
                slot["name"] = str(name)
            arguments = function.get("arguments")
            if arguments:
                slot["arguments"].append(arguments if isinstance(arguments, str) else json.dumps(arguments))

    def requests(self) -> list[ToolCallRequest]:
        """The complete calls, in index order."""
        calls = []
        for index in sorted(self.slots):
            slot = self.slots[index]
            calls.append(
                tool_call_from_fragments(
                    call_id=slot["id"] or f"call_{uuid.uuid4().hex[:24]}",
                    name=slot["name"],
                    fragments=slot["arguments"],
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
    hooks: CallHooks | None = None,
) -> AsyncIterator[StreamEvent]:
    """One streamed Chat Completions call, as neutral events (kinds openai-compatible, openai and azure-openai)."""
    api_key = provider_api_key(provider)
    base_url = provider.base_url or (OPENAI_BASE_URL if provider.kind == "openai" else "")
    context = ErrorContext(provider=provider, model=model, api_key=api_key, base_url=base_url)
    if provider.kind == "azure-openai":
        if not base_url:
            raise ModelCallError(
                f"Provider {provider.name!r} has no endpoint: set its base URL to the Azure resource's endpoint "
                "(https://<resource>.openai.azure.com)."
            )
        if not provider.api_version:
            raise ModelCallError(
                f"Provider {provider.name!r} has no API version: set one (e.g. 2024-10-21); Azure OpenAI requires it."
            )
    elif not base_url:
        raise ModelCallError(f"Provider {provider.name!r} has no base URL: set one (e.g. http://127.0.0.1:8000/v1).")
    client = await client_for(
        base_url=base_url, api_key=api_key or NO_KEY, kind=provider.kind, api_version=provider.api_version
    )
    request: dict[str, Any] = {
        "model": model.identifier,  # Azure: the deployment name, which the SDK puts in the path
        "messages": wire_messages(system, messages),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if tools:
        request["tools"] = wire_tools(tools)
    request.update(request_options(provider.kind, model))
    response = await decoded_stream(
        client,
        context=context,
        path="/chat/completions",
        body=request,
        options={"headers": request_headers(provider, correlation), "security": {"bearer_auth": True}},
        errors=TRANSPORT_ERRORS,
    )

    calls = _Calls()
    finish_reason: str | None = None
    usage: Any = None
    # The loop runs once per streamed token: lookups are kept to what each chunk needs.
    async with response:
        next_chunk = response.__aiter__().__anext__
        while True:
            try:
                chunk = await next_chunk()
            except StopAsyncIteration:
                break
            except TRANSPORT_ERRORS as exc:
                raise failed_mid_stream(hooks, context.translate(exc, mid_stream=True)) from None
            except (ValueError, TypeError):  # data that is not JSON
                raise failed_mid_stream(hooks, context.not_a_stream()) from None
            try:
                if chunk.get("usage") is not None:  # usually on a last chunk without choices, sometimes earlier
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or ():
                    if choice.get("index"):  # only the first choice: 0, or None from servers that leave it out
                        continue
                    delta = choice.get("delta")
                    if delta:
                        content = delta.get("content")
                        if len(delta) > 1 or not content:  # more than a token of text (the common chunk)
                            # Reasoning some servers add: vLLM and DeepSeek as reasoning_content, OpenRouter as
                            # reasoning.
                            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                            if reasoning and isinstance(reasoning, str):
                                yield ReasoningDelta(reasoning)
                            tool_calls = delta.get("tool_calls")
                            if tool_calls:
                                for fragment in tool_calls:
                                    calls.add(fragment)
                        if content:
                            if type(content) is not str:
                                raise TypeError("content is not text")
                            yield TextDelta(content)
                    if choice.get("finish_reason"):
                        finish_reason = str(choice["finish_reason"])
            except (AttributeError, TypeError):  # a field of the wrong shape
                raise failed_mid_stream(hooks, context.not_a_stream()) from None

    if finish_reason is None:
        raise ended_early(hooks, context.host)
    requests = calls.requests()
    for call in requests:
        yield call
    if isinstance(usage, dict):
        yield _usage(usage)
    for event in summary_events(hooks):
        yield event
    yield TurnEnd(stop_reason=_stop_reason(finish_reason, bool(requests)))


async def decoded_stream(
    client: Any,
    *,
    context: ErrorContext,
    path: str,
    body: dict[str, Any],
    options: dict[str, Any],
    errors: tuple[type[BaseException], ...],
) -> Any:
    """Send a streamed request through the SDK client and get its events as decoded JSON (openai, anthropic).

    The SDK sends the request (auth, Azure's deployment path, timeouts, status errors) and decodes the
    server-sent events, raising a stream's `error` events; with `cast_to=object` it hands over each event's
    JSON instead of building a pydantic object that the adapter would throw away (65 µs per Chat Completions
    chunk, 15 µs per Anthropic event). A failure to open (one of `errors`) leaves as a ModelCallError.
    """
    try:
        return await client.post(
            path,
            body=body,
            cast_to=object,
            stream=True,
            stream_cls=context.sdk.AsyncStream[object],
            options=options,
        )
    except errors as exc:
        raise context.translate(exc, mid_stream=False) from None


def request_options(kind: str, model: LanguageModel) -> dict[str, Any]:
    """The model's options as Chat Completions parameters: temperature, reasoning effort, output limit."""
    options = model.options if isinstance(model.options, dict) else {}
    params: dict[str, Any] = {}
    if options.get("temperature") is not None:
        params["temperature"] = float(options["temperature"])
    if options.get("reasoning_effort"):
        params["reasoning_effort"] = str(options["reasoning_effort"])
    if model.max_output_tokens:
        # OpenAI's reasoning models only take max_completion_tokens; many local servers only know max_tokens.
        name = "max_tokens" if kind == "openai-compatible" else "max_completion_tokens"
        params[name] = int(model.max_output_tokens)
    return params


def _usage(usage: dict[str, Any]) -> Usage:
    """Neutral usage from the wire's usage object: prompt tokens read from the cache are counted apart."""
    details = usage.get("prompt_tokens_details")
    cached = token_count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    prompt = token_count(usage.get("prompt_tokens"))
    return Usage(
        input_tokens=max(0, prompt - cached),
        output_tokens=token_count(usage.get("completion_tokens")),
        cache_read_tokens=cached,
    )


def token_count(value: Any) -> int:
    """A token count from the wire; 0 where a server sent none or nonsense (text, a list, an infinity)."""
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError, OverflowError):
        return 0


class ErrorContext:
    """Turns SDK and transport errors into ModelCallErrors that say what to do, without secrets.

    `sdk` is the vendor SDK module whose exception classes to recognise (openai or anthropic: both SDKs share
    the same error hierarchy); `protocol` and `base_url_hint` word the error for a body that is no such stream.
    """

    def __init__(
        self,
        *,
        provider: Provider,
        model: LanguageModel,
        api_key: str,
        base_url: str | None = None,
        sdk: ModuleType = openai,
        protocol: str = "Chat Completions",
        base_url_hint: str = "it usually ends in /v1",
    ) -> None:
        self.provider = provider
        self.model = model
        self.api_key = api_key
        self.sdk = sdk
        self.protocol = protocol
        self.base_url_hint = base_url_hint
        self.host = endpoint_host(provider.base_url if base_url is None else base_url)

    def scrub(self, text: str) -> str:
        """Remove the key (and any bearer token) from a vendor's text, and keep it short."""
        if self.api_key:
            text = text.replace(self.api_key, "****")
        text = re.sub(r"(?i)bearer\s+\S+", "Bearer ****", text)
        text = " ".join(text.split())
        return text[:VENDOR_MESSAGE_CHARS] + ("..." if len(text) > VENDOR_MESSAGE_CHARS else "")

    def not_a_stream(self) -> ModelCallError:
        """The error for a body that is not a stream of the protocol (usually a base URL pointing elsewhere)."""
        return ModelCallError(
            f"{self.host} sent something that is not a {self.protocol} stream: is the base URL right "
            f"({self.base_url_hint})?"
        )

    def vendor_message(self, exc: Any) -> str:
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
        sdk = self.sdk
        if isinstance(exc, sdk.APIStatusError):
            return self._status_error(exc)
        if isinstance(exc, sdk.APITimeoutError | httpx2.TimeoutException):
            timeout = settings.PROVIDER_TIMEOUT_SECONDS
            return ModelCallError(
                f"Timed out waiting for {self.host} (limit {timeout:g} s): the model may be overloaded; try again, "
                "or raise AIRLOCK_PROVIDER_TIMEOUT_SECONDS.",
                retryable=True,
            )
        if isinstance(exc, httpx2.InvalidURL):
            return ModelCallError(f"The base URL of provider {self.provider.name!r} is not a valid URL: fix it.")
        if isinstance(exc, sdk.APIConnectionError | OSError) or not isinstance(exc, sdk.APIError):
            return self._connection_error(exc, mid_stream=mid_stream)
        detail = self.vendor_message(exc)
        return ModelCallError(f"{self.host} reported an error while answering: {detail}", retryable=True)

    def _status_error(self, exc: Any) -> ModelCallError:
        status = exc.status_code
        return http_status_error(
            status=status,
            host=self.host,
            provider_name=self.provider.name,
            model_identifier=self.model.identifier,
            detail=self.vendor_message(exc),
            retry_after=_retry_after(exc) if status == 429 else None,
        )

    def _connection_error(self, exc: BaseException, *, mid_stream: bool) -> ModelCallError:
        return connection_error(exc, host=self.host, mid_stream=mid_stream, scrub=self.scrub)


def _retry_after(exc: Any) -> float | None:
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
