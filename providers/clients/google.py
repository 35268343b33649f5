"""The Google Gemini adapter, on the official google-genai SDK.

Vendor types stay in this module: neutral messages go in, `providers.clients.base` events come out, and every
SDK or transport error leaves as a ModelCallError whose message never contains the API key (which the SDK
sends in the `x-goog-api-key` header).

Thought signatures: thinking Gemini models sign parts of an answer (the first function call of each step, the
last text part, sometimes a thought), and Gemini 3 refuses a tool-using turn whose function calls lost their
signature. The signatures leave as a ReasoningState of kind "google" and go back on the same parts. Function
calls whose arguments stream over several parts (`will_continue` / `partial_args`) are assembled into one call.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import re
import uuid
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx2
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from portal.crypto import decrypt_secret
from providers.clients.base import (
    CallHooks,
    ModelCallError,
    ReasoningDelta,
    ReasoningState,
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
    reasoning_blocks,
    request_headers,
    summary_events,
)

if TYPE_CHECKING:
    from providers.models import LanguageModel, Provider

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/"
MAX_CLIENTS_PER_LOOP = 32
VENDOR_MESSAGE_CHARS = 300
# Our own ids for calls Gemini sent without one; they are never sent back to Gemini.
LOCAL_CALL_ID_PREFIX = "gcall_"
REASONING_KIND = "google"  # the ReasoningState kind this adapter emits and sends back
# Gemini 2.5+ wants each function call it made sent back with its thought signature (from the assistant message's
# "reasoning"); the first call of a turn that has none (another vendor's turn, one stored before signatures
# were kept) gets the placeholder that Google documents for conversations it did not produce.
SKIP_SIGNATURE = base64.urlsafe_b64decode("skip_thought_signature_validator")  # sent as that literal text

FINISH_REASONS: dict[str, str] = {
    "STOP": "end_turn",
    "MAX_TOKENS": "max_tokens",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
}
THINKING_LEVELS = {"minimal": "MINIMAL", "low": "LOW", "medium": "MEDIUM", "high": "HIGH", "xhigh": "XHIGH"}

TRANSPORT_ERRORS = (genai_errors.APIError, httpx2.HTTPError, httpx2.InvalidURL, OSError)

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, OrderedDict[tuple, genai.Client]] = (
    weakref.WeakKeyDictionary()
)


def _timeout_seconds() -> float:
    return float(settings.PROVIDER_TIMEOUT_SECONDS)


async def client_for(*, base_url: str, api_key: str, api_version: str = "") -> genai.Client:
    """The cached SDK client of this event loop for an endpoint and key (created on first use)."""
    timeout_ms = int(_timeout_seconds() * 1000)
    key = (base_url, hashlib.sha256(api_key.encode()).hexdigest(), api_version, timeout_ms)
    pool = _clients.setdefault(asyncio.get_running_loop(), OrderedDict())
    client = pool.get(key)
    if client is not None:
        pool.move_to_end(key)
        return client
    # retry_options stays unset: the SDK then tries once, and Airlock's retry layer decides about retrying.
    options = types.HttpOptions(base_url=base_url, timeout=timeout_ms, api_version=api_version or None)
    # The Gemini API with an API key, whatever GOOGLE_GENAI_USE_VERTEXAI says in the server's environment.
    client = genai.Client(vertexai=False, api_key=api_key, http_options=options)
    pool[key] = client
    while len(pool) > MAX_CLIENTS_PER_LOOP:
        _, evicted = pool.popitem(last=False)
        with contextlib.suppress(Exception):
            await evicted.aio.aclose()
    return client


def _signature_text(signature: bytes) -> str:
    """A thought signature as stored (URL-safe base64, the SDK's own JSON form)."""
    return base64.urlsafe_b64encode(signature).decode()


def _signature_bytes(text: Any) -> bytes | None:
    """A stored thought signature back to its bytes (None when it is not base64)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return base64.urlsafe_b64decode(text.replace("+", "-").replace("/", "_"))
    except (binascii.Error, ValueError):
        return None


def _text_parts(content: str, signed: list[dict[str, Any]]) -> list[types.Part]:
    """An answer's text as parts, each signature back on the exact text it came with (Gemini signs the last
    parts of an answer, an empty one included); the unsigned rest is one part before them."""
    tail: list[types.Part] = []
    rest = content
    for block in reversed(signed):
        text = str(block.get("text") or "")
        signature = _signature_bytes(block.get("signature"))
        if signature is None or (text and not rest.endswith(text)):
            continue  # a signature whose text is gone cannot be placed
        if text:
            rest = rest[: len(rest) - len(text)]
        tail.insert(0, types.Part(text=text, thought_signature=signature))
    return ([types.Part(text=rest)] if rest else []) + tail


def _arguments(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.strip():
        try:
            parsed = json.loads(value)
        except ValueError:
            return {"value": value}
        return parsed if isinstance(parsed, dict) else {"value": parsed}
    return {}


def wire_contents(messages: list[dict[str, Any]]) -> list[types.Content]:
    """Neutral messages as Gemini contents: assistant tool calls become functionCall parts, tool results
    functionResponse parts named after the call they answer; consecutive turns of one role are merged, and the
    thought signatures of an assistant message's "reasoning" go back on the parts they came with."""
    contents: list[types.Content] = []
    names: dict[str, str] = {}
    unanswered: list[str] = []

    def add(role: str, parts: list[types.Part]) -> None:
        if not parts:
            return
        if contents and contents[-1].role == role:
            contents[-1].parts = [*(contents[-1].parts or []), *parts]
        else:
            contents.append(types.Content(role=role, parts=parts))

    def response_part(call_id: str, output: str) -> types.Part:
        response = types.FunctionResponse(name=names.get(call_id, "tool"), response={"output": output})
        if call_id and not call_id.startswith(LOCAL_CALL_ID_PREFIX):
            response.id = call_id
        return types.Part(function_response=response)

    def close_unanswered() -> None:
        add("user", [response_part(call_id, "(no result: the call was interrupted)") for call_id in unanswered])
        unanswered.clear()

    for position, message in enumerate(messages):
        role = message.get("role")
        if role != "tool":
            close_unanswered()
        if role in ("user", "system"):
            add("user", [types.Part(text=message.get("content") or " ")])
        elif role == "assistant":
            signed = reasoning_blocks(message, REASONING_KIND)
            parts = [
                types.Part(text=str(block["thought"]), thought=True, thought_signature=signature)
                for block in signed
                if "thought" in block and (signature := _signature_bytes(block.get("signature"))) is not None
            ]
            parts += _text_parts(str(message.get("content") or ""), [b for b in signed if "text" in b])
            call_signatures = {str(b["call_id"]): b.get("signature") for b in signed if "call_id" in b}
            first_call = True
            for call in message.get("tool_calls") or []:
                call_id = str(call.get("id") or "")
                names[call_id] = call["name"]
                function_call = types.FunctionCall(name=call["name"], args=_arguments(call.get("arguments")))
                if call_id and not call_id.startswith(LOCAL_CALL_ID_PREFIX):
                    function_call.id = call_id
                part = types.Part(function_call=function_call)
                signature = _signature_bytes(call_signatures.get(call_id))
                if signature is None and first_call:  # the first call of a step must carry one
                    signature = SKIP_SIGNATURE
                if signature is not None:
                    part.thought_signature = signature
                first_call = False
                parts.append(part)
                unanswered.append(call_id)
            add("model", parts)
        elif role == "tool":
            call_id = str(message.get("tool_call_id") or "")
            if call_id in unanswered:
                unanswered.remove(call_id)
            add("user", [response_part(call_id, message.get("content") or "")])
        else:
            raise ValueError(f"Message {position} has role {role!r}: use user, assistant or tool.")
    close_unanswered()
    return contents


def generation_config(
    *, model: LanguageModel, system: str, tools: list[ToolSpec], headers: dict[str, str]
) -> types.GenerateContentConfig:
    """System prompt, tools, sampling and thinking options, and per-request headers."""
    options = model.options or {}
    config = types.GenerateContentConfig(
        system_instruction=system or None,
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        http_options=types.HttpOptions(headers=headers) if headers else None,
    )
    if tools:
        config.tools = [
            types.Tool(
                function_declarations=[
                    types.FunctionDeclaration(
                        name=tool.name, description=tool.description, parameters_json_schema=tool.parameters
                    )
                    for tool in tools
                ]
            )
        ]
    if options.get("temperature") is not None:
        config.temperature = float(options["temperature"])
    if model.max_output_tokens:
        config.max_output_tokens = int(model.max_output_tokens)
    budget = options.get("thinking_budget_tokens")
    effort = str(options.get("reasoning_effort") or "").lower()
    if budget is not None:
        config.thinking_config = types.ThinkingConfig(thinking_budget=int(budget), include_thoughts=int(budget) != 0)
    elif effort in THINKING_LEVELS:
        config.thinking_config = types.ThinkingConfig(thinking_level=THINKING_LEVELS[effort], include_thoughts=True)
    return config


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
    """One streamed generateContent call, as neutral events."""
    try:
        api_key = decrypt_secret(provider.api_key_encrypted) if provider.api_key_encrypted else ""
    except ImproperlyConfigured:
        raise ModelCallError(
            f"The stored API key of provider {provider.name!r} cannot be decrypted with AIRLOCK_ENCRYPTION_KEYS "
            "(was a key removed?): restore the key or set the provider's API key again."
        ) from None
    if not api_key:
        raise ModelCallError(f"Provider {provider.name!r} has no API key: set the Gemini API key on the provider.")
    base_url = provider.base_url or DEFAULT_BASE_URL
    context = _ErrorContext(provider=provider, model=model, api_key=api_key, base_url=base_url)
    client = await client_for(base_url=base_url, api_key=api_key, api_version=provider.api_version)
    config = generation_config(model=model, system=system, tools=tools, headers=request_headers(provider, correlation))
    contents = wire_contents(messages)
    try:
        response = await client.aio.models.generate_content_stream(
            model=model.identifier, contents=contents, config=config
        )
    except TRANSPORT_ERRORS as exc:
        raise context.translate(exc, mid_stream=False) from None
    except ValueError:
        raise context.not_gemini() from None

    # The answer's function calls with their thought signatures, in order: Gemini sends each call whole (Vertex
    # AI streams arguments in pieces only when asked to, with `stream_function_call_arguments`; Airlock never is).
    requests: list[tuple[ToolCallRequest, bytes | None]] = []
    signed: list[dict[str, Any]] = []  # text and thought parts that carried a thought signature
    finish_reason: str | None = None
    usage: Any = None
    received = False  # the SDK sends the request on the first read: errors before any chunk are not mid-stream
    iterator = response.__aiter__()
    try:
        while True:
            try:
                chunk = await iterator.__anext__()
            except StopAsyncIteration:
                break
            except TRANSPORT_ERRORS as exc:
                raise failed_mid_stream(hooks, context.translate(exc, mid_stream=received)) from None
            except ValueError:
                raise failed_mid_stream(hooks, context.not_gemini()) from None
            received = True
            if chunk.usage_metadata is not None:
                usage = chunk.usage_metadata
            for candidate in (chunk.candidates or [])[:1]:
                content = candidate.content
                parts = (content.parts if content is not None else None) or []
                for part in parts:
                    if (function_call := part.function_call) is not None:
                        signature = part.thought_signature or None
                        requests.append(
                            (_tool_call(function_call.id, function_call.name, function_call.args), signature)
                        )
                    elif part.text:
                        if part.thought:
                            yield ReasoningDelta(part.text)
                            if part.thought_signature:
                                signature = _signature_text(part.thought_signature)
                                signed.append({"thought": part.text, "signature": signature})
                        else:
                            yield TextDelta(part.text)
                    elif part.thought_signature:  # an empty part that only carries a signature
                        key = "thought" if part.thought else "text"
                        signed.append({key: "", "signature": _signature_text(part.thought_signature)})
                if candidate.finish_reason is not None:
                    finish_reason = str(getattr(candidate.finish_reason, "value", candidate.finish_reason))
                    # Gemini signs the last part of an answer: look for signed text in the final chunk only, so
                    # that the text parts before it cost nothing more.
                    signed.extend(
                        {"text": part.text, "signature": _signature_text(part.thought_signature)}
                        for part in parts
                        if part.text and part.thought_signature and not part.thought and part.function_call is None
                    )
            feedback = chunk.prompt_feedback
            if feedback is not None and feedback.block_reason is not None and finish_reason is None:
                finish_reason = "SAFETY"
    finally:
        with contextlib.suppress(Exception):
            await iterator.aclose()

    if finish_reason is None:
        raise ended_early(hooks, context.host)
    for call, _ in requests:
        yield call
    signed += [
        {"call_id": call.id, "signature": _signature_text(signature)} for call, signature in requests if signature
    ]
    if signed:
        yield ReasoningState(kind=REASONING_KIND, blocks=tuple(signed))
    if usage is not None:
        cached = int(usage.cached_content_token_count or 0)
        yield Usage(
            input_tokens=max(0, int(usage.prompt_token_count or 0) - cached),
            output_tokens=int(usage.candidates_token_count or 0) + int(usage.thoughts_token_count or 0),
            cache_read_tokens=cached,
        )
    if requests:
        stop_reason = "tool_use"
    else:
        stop_reason = FINISH_REASONS.get(finish_reason, "end_turn")
    for event in summary_events(hooks):
        yield event
    yield TurnEnd(stop_reason=stop_reason)


def _tool_call(call_id: str | None, name: str | None, arguments: Any) -> ToolCallRequest:
    """A whole Gemini function call as a ToolCallRequest with an id the conversation can refer to."""
    return ToolCallRequest(
        id=call_id or f"{LOCAL_CALL_ID_PREFIX}{uuid.uuid4().hex[:24]}",
        name=name or "",
        arguments=arguments if isinstance(arguments, dict) else {},
        raw_arguments=json.dumps(arguments if arguments is not None else {}),
    )


class _ErrorContext:
    """Turns SDK and transport errors into ModelCallErrors that say what to do, without secrets."""

    def __init__(self, *, provider: Provider, model: LanguageModel, api_key: str, base_url: str) -> None:
        self.provider = provider
        self.model = model
        self.api_key = api_key
        self.host = endpoint_host(base_url)

    def scrub(self, text: str) -> str:
        """Remove the key from a vendor's text, and keep it short."""
        if self.api_key:
            text = text.replace(self.api_key, "****")
        text = re.sub(r"AIza[0-9A-Za-z_\-]{10,}", "AIza****", text)
        text = re.sub(r"(?i)(key=)[^&\s]+", r"\1****", text)
        text = " ".join(text.split())
        return text[:VENDOR_MESSAGE_CHARS] + ("..." if len(text) > VENDOR_MESSAGE_CHARS else "")

    def not_gemini(self) -> ModelCallError:
        """The answer was not a Gemini stream (a wrong base URL, a proxy's page)."""
        return ModelCallError(
            f"{self.host} sent something that is not a Gemini API stream: is the provider's base URL right "
            f"(e.g. {DEFAULT_BASE_URL})?"
        )

    def translate(self, exc: BaseException, *, mid_stream: bool) -> ModelCallError:
        """The ModelCallError for an SDK or transport error."""
        if isinstance(exc, genai_errors.APIError):
            return self._status_error(exc)
        if isinstance(exc, httpx2.TimeoutException):
            return ModelCallError(
                f"Timed out waiting for {self.host} (limit {_timeout_seconds():g} s): the model may be overloaded; "
                "try again, or raise AIRLOCK_PROVIDER_TIMEOUT_SECONDS.",
                retryable=True,
            )
        if isinstance(exc, httpx2.InvalidURL | httpx2.UnsupportedProtocol):
            return ModelCallError(f"The base URL of provider {self.provider.name!r} is not a valid URL: fix it.")
        return self._connection_error(exc, mid_stream=mid_stream)

    def _status_error(self, exc: genai_errors.APIError) -> ModelCallError:
        status = int(exc.code or 0)
        detail = self.scrub(str(exc.message or exc.status or ""))
        reasons = _detail_values(exc.details, "reason")
        name = self.provider.name
        identifier = self.model.identifier
        if status == 401 or "API_KEY_INVALID" in reasons or (status == 400 and "api key not valid" in detail.lower()):
            return ModelCallError(
                f"{status}: the API key was rejected by {self.host}: set a valid Gemini API key on provider {name!r}.",
                status=status,
            )
        return http_status_error(
            status=status,
            host=self.host,
            provider_name=name,
            model_identifier=identifier,
            detail=detail,
            retry_after=_retry_after(exc) if status == 429 else None,
            access_advice="check that the key's project has the Generative Language API enabled",
            rate_limit_words="rate limited or out of quota at",
        )

    def _connection_error(self, exc: BaseException, *, mid_stream: bool) -> ModelCallError:
        return connection_error(exc, host=self.host, mid_stream=mid_stream, scrub=self.scrub)


def _detail_values(details: Any, key: str) -> set[str]:
    """Values of `key` in the `details` list of a Google error body."""
    error = details.get("error", details) if isinstance(details, dict) else {}
    items = error.get("details") if isinstance(error, dict) else None
    return {str(item.get(key)) for item in items or [] if isinstance(item, dict) and item.get(key)}


def _retry_after(exc: genai_errors.APIError) -> float | None:
    """Seconds to wait: Google's RetryInfo detail ("27s"), else a Retry-After header."""
    for delay in _detail_values(exc.details, "retryDelay"):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)s\s*", delay)
        if match:
            return float(match.group(1))
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    value = headers.get("retry-after") if hasattr(headers, "get") else None
    if value is not None:
        with contextlib.suppress(ValueError):
            seconds = float(value)
            if seconds >= 0:
                return seconds
    return None
