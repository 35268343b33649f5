"""The AWS Bedrock adapter: the Converse streaming API through the official AWS SDK (boto3).

boto3 is synchronous, so each call runs in its own worker thread and hands stream events to the event loop
through an asyncio.Queue: the loop never blocks on the network. Credentials are the provider's stored access
key id and secret, or, with `use_ambient_credentials`, the server's default AWS credential chain (environment,
instance or pod role). botocore's own retries are off: Airlock's retry layer decides. Every SDK error leaves as
a ModelCallError whose message never contains the secret.

Extended thinking with tools (Claude on Bedrock): Converse refuses an assistant tool-use turn that does not start
with the `reasoningContent` blocks the model sent, signature included. Those blocks (text and signature, or the
encrypted `redactedContent`) leave as a ReasoningState of kind "bedrock" and go back verbatim at the start of
that assistant turn.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import boto3
from botocore import exceptions as boto_errors
from botocore.config import Config
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

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
    ended_early,
    endpoint_host,
    failed_mid_stream,
    reasoning_blocks,
    request_headers,
    summary_events,
    tool_call_from_fragments,
)

if TYPE_CHECKING:
    from providers.models import LanguageModel, Provider

CONNECT_TIMEOUT_SECONDS = 10.0
REASONING_KIND = "bedrock"  # the ReasoningState kind this adapter emits and sends back
MAX_CLIENTS = 32
VENDOR_MESSAGE_CHARS = 300

STOP_REASONS: dict[str, str] = {
    "end_turn": "end_turn",
    "stop_sequence": "end_turn",
    "tool_use": "tool_use",
    "max_tokens": "max_tokens",
    "model_context_window_exceeded": "max_tokens",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
# Error codes (lower-cased: stream exceptions arrive as "throttlingException") -> HTTP status.
ERROR_STATUS: dict[str, int] = {
    "validationexception": 400,
    "accessdeniedexception": 403,
    "unrecognizedclientexception": 403,
    "invalidsignatureexception": 403,
    "expiredtokenexception": 403,
    "missingauthenticationtokenexception": 403,
    "resourcenotfoundexception": 404,
    "modeltimeoutexception": 408,
    "modelerrorexception": 424,
    "modelnotreadyexception": 429,
    "throttlingexception": 429,
    "servicequotaexceededexception": 429,
    "internalserverexception": 500,
    "modelstreamerrorexception": 502,
    "serviceunavailableexception": 503,
}
_UNKNOWN_KEY = "AWS does not know the access key id (deleted, deactivated, or of another AWS partition)"
_BAD_SIGNATURE = (
    "the request signature does not match: the secret access key does not belong to the access key id, "
    "or the control plane's clock is wrong"
)
# AWS error codes (lower-cased) that mean "these credentials are not accepted", and what each one means.
REJECTED_CREDENTIALS: dict[str, str] = {
    "unrecognizedclientexception": _UNKNOWN_KEY,
    "invalidclienttokenid": _UNKNOWN_KEY,
    "invalidsignatureexception": _BAD_SIGNATURE,
    "signaturedoesnotmatch": _BAD_SIGNATURE,
    "incompletesignatureexception": "the request signature is incomplete (a proxy may strip the Authorization header)",
    "missingauthenticationtokenexception": (
        "the request carried no credentials (a proxy may strip the Authorization header)"
    ),
    "expiredtokenexception": "the session token has expired",
    "unrecognizedclienttokenexception": "the session token is not valid",
}

_clients: OrderedDict[tuple, Any] = OrderedDict()
_clients_lock = threading.Lock()
_session_lock = threading.Lock()
_session: boto3.session.Session | None = None
_call_headers = threading.local()  # the headers of the call running in this worker thread


def _timeout_seconds() -> float:
    return float(settings.PROVIDER_TIMEOUT_SECONDS)


def _shared_session() -> boto3.session.Session:
    """One boto3 session for clients with stored keys: it loads the service model once (call under _session_lock)."""
    global _session
    if _session is None:
        _session = boto3.session.Session()
    return _session


def _add_call_headers(request: Any, **kwargs: Any) -> None:
    """botocore hook: put this thread's call headers (correlation, gateway extras) on the request."""
    for name, value in (getattr(_call_headers, "headers", None) or {}).items():
        request.headers[name] = value


def client_for(
    *, endpoint_url: str, region: str, access_key_id: str = "", secret_access_key: str = "", ambient: bool = False
) -> Any:
    """The cached bedrock-runtime client for an endpoint, region and credentials (blocking: call it in a thread)."""
    timeout = _timeout_seconds()
    secret_hash = hashlib.sha256(secret_access_key.encode()).hexdigest()
    key = (endpoint_url, region, access_key_id, secret_hash, ambient, timeout)
    with _clients_lock:
        client = _clients.get(key)
        if client is not None:
            _clients.move_to_end(key)
            return client
    config = Config(
        retries={"total_max_attempts": 1, "mode": "standard"},  # one attempt: Airlock's retry layer retries
        connect_timeout=min(CONNECT_TIMEOUT_SECONDS, timeout),
        read_timeout=timeout,
    )
    with _session_lock:  # boto3 sessions are not thread-safe; creating a client from a warm one takes ~15 ms
        if ambient:
            # A session of its own, so that the default credential chain (environment, config, role) is resolved
            # for this client and refreshed by it.
            client = boto3.session.Session().client(
                "bedrock-runtime", region_name=region or None, endpoint_url=endpoint_url or None, config=config
            )
        else:
            client = _shared_session().client(
                "bedrock-runtime",
                region_name=region or None,
                endpoint_url=endpoint_url or None,
                aws_access_key_id=access_key_id,
                aws_secret_access_key=secret_access_key,
                config=config,
            )
    client.meta.events.register("before-sign.bedrock-runtime.ConverseStream", _add_call_headers)
    with _clients_lock:
        _clients[key] = client
        while len(_clients) > MAX_CLIENTS:
            _clients.popitem(last=False)
    return client


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


def _reasoning_content(block: dict[str, Any]) -> dict[str, Any] | None:
    """A stored reasoning block as a Converse `reasoningContent` block (redactedContent back to bytes)."""
    if block.get("redactedContent"):
        try:
            return {"reasoningContent": {"redactedContent": base64.b64decode(block["redactedContent"])}}
        except (binascii.Error, TypeError, ValueError):
            return None
    if block.get("signature"):
        text = {"text": str(block.get("text") or ""), "signature": str(block["signature"])}
        return {"reasoningContent": {"reasoningText": text}}
    return None


def wire_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Neutral messages in the Converse shape: toolUse / toolResult content blocks, roles alternating.

    Consecutive messages of one role are merged (Converse rejects two user turns in a row), empty text blocks
    are left out (Converse rejects them), and a tool call that never got its result gets a stand-in result. An
    assistant turn starts with the reasoning blocks of its "reasoning", when that came from Bedrock.
    """
    wire: list[dict[str, Any]] = []
    unanswered: list[str] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if wire and wire[-1]["role"] == role:
            wire[-1]["content"].extend(blocks)
        else:
            wire.append({"role": role, "content": blocks})

    def result_block(call_id: str, text: str) -> dict[str, Any]:
        return {"toolResult": {"toolUseId": call_id, "content": [{"text": text or "(no output)"}]}}

    def close_unanswered() -> None:
        add("user", [result_block(call_id, "(no result: the call was interrupted)") for call_id in unanswered])
        unanswered.clear()

    for position, message in enumerate(messages):
        role = message.get("role")
        if role != "tool":
            close_unanswered()
        if role in ("user", "system"):
            add("user", [{"text": message.get("content") or "(empty message)"}])
        elif role == "assistant":
            blocks: list[dict[str, Any]] = [{"text": message["content"]}] if message.get("content") else []
            for call in message.get("tool_calls") or []:
                call_id = str(call.get("id") or f"tooluse_{uuid.uuid4().hex[:22]}")
                blocks.append(
                    {
                        "toolUse": {
                            "toolUseId": call_id,
                            "name": call["name"],
                            "input": _arguments(call.get("arguments")),
                        }
                    }
                )
                unanswered.append(call_id)
            if blocks:
                signed = (_reasoning_content(b) for b in reasoning_blocks(message, REASONING_KIND))
                blocks[:0] = [b for b in signed if b is not None]
            add("assistant", blocks or [{"text": "(no answer)"}])
        elif role == "tool":
            call_id = str(message.get("tool_call_id") or "")
            if call_id in unanswered:
                unanswered.remove(call_id)
            add("user", [result_block(call_id, message.get("content") or "")])
        else:
            raise ValueError(f"Message {position} has role {role!r}: use user, assistant or tool.")
    close_unanswered()
    return wire


def answers_unsigned_tool_turn(wire: list[dict[str, Any]]) -> bool:
    """Whether the request answers tool calls of an assistant turn that does not start with reasoning content.

    With thinking on, Claude refuses that (a turn from another vendor, or from before thinking was turned on, has
    no signed reasoning to send back); with thinking off for this one request it accepts it.
    """
    if len(wire) < 2 or wire[-1]["role"] != "user" or not all("toolResult" in b for b in wire[-1]["content"]):
        return False
    assistant = wire[-2]
    if assistant["role"] != "assistant" or not any("toolUse" in b for b in assistant["content"]):
        return False
    return "reasoningContent" not in assistant["content"][0]


def converse_request(
    *, model: LanguageModel, system: str, messages: list[dict[str, Any]], tools: list[ToolSpec]
) -> dict[str, Any]:
    """The keyword arguments of `converse_stream`."""
    request: dict[str, Any] = {"modelId": model.identifier, "messages": wire_messages(messages)}
    if system:
        request["system"] = [{"text": system}]
    if tools:
        request["toolConfig"] = {
            "tools": [
                {"toolSpec": {"name": t.name, "description": t.description, "inputSchema": {"json": t.parameters}}}
                for t in tools
            ]
        }
    options = model.options or {}
    inference: dict[str, Any] = {}
    if model.max_output_tokens:
        inference["maxTokens"] = int(model.max_output_tokens)
    if options.get("temperature") is not None:
        inference["temperature"] = float(options["temperature"])
    if inference:
        request["inferenceConfig"] = inference
    budget = options.get("thinking_budget_tokens")
    # Claude on Bedrock: extended thinking, except for a request that could not carry the signed reasoning back
    if budget and not answers_unsigned_tool_turn(request["messages"]):
        request["additionalModelRequestFields"] = {"thinking": {"type": "enabled", "budget_tokens": int(budget)}}
    return request


def _stream_in_thread(
    *,
    connect: Callable[[], Any],
    request: dict[str, Any],
    headers: dict[str, str],
    put: Callable[[tuple[str, Any]], None],
    stop: threading.Event,
    holder: dict[str, Any],
) -> None:
    """Worker thread: create the client, call converse_stream, forward each event; report the end or the error."""
    _call_headers.headers = headers
    try:
        client = connect()
        response = client.converse_stream(**request)
        stream = response["stream"]
        holder["stream"] = stream
        if stop.is_set():
            return
        for item in stream:
            if stop.is_set():
                return
            put(("event", item))
        put(("done", None))
    except Exception as exc:  # every failure is handed to the event loop, which translates it
        if not stop.is_set():
            put(("error", exc))
    finally:
        _call_headers.headers = None
        stream = holder.get("stream")
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()


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
    """One streamed Converse call, as neutral events."""
    ambient = bool(provider.use_ambient_credentials)
    secret = ""
    if not ambient:
        if not provider.aws_access_key_id or not provider.api_key_encrypted:
            raise ModelCallError(
                f"Provider {provider.name!r} has no AWS access key: set the access key id and secret access key, "
                "or turn on ambient credentials to use the server's own AWS role."
            )
        try:
            secret = decrypt_secret(provider.api_key_encrypted)
        except ImproperlyConfigured:
            raise ModelCallError(
                f"The stored AWS secret of provider {provider.name!r} cannot be decrypted with "
                "AIRLOCK_ENCRYPTION_KEYS (was a key removed?): restore the key or set the secret again."
            ) from None
    region = provider.region or ""
    endpoint = provider.base_url or (f"https://bedrock-runtime.{region}.amazonaws.com" if region else "")
    context = _ErrorContext(provider=provider, model=model, secret=secret, endpoint=endpoint)
    request = converse_request(model=model, system=system, messages=messages, tools=tools)

    def connect() -> Any:
        return client_for(
            endpoint_url=provider.base_url,
            region=region,
            access_key_id="" if ambient else provider.aws_access_key_id,
            secret_access_key=secret,
            ambient=ambient,
        )

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    stop = threading.Event()
    holder: dict[str, Any] = {}

    def put(item: tuple[str, Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening any more
            loop.call_soon_threadsafe(queue.put_nowait, item)

    worker = threading.Thread(
        target=_stream_in_thread,
        kwargs={
            "connect": connect,
            "request": request,
            "headers": request_headers(provider, correlation),
            "put": put,
            "stop": stop,
            "holder": holder,
        },
        name=f"bedrock-stream-{model.identifier}"[:60],
        daemon=True,
    )
    worker.start()

    slots: dict[int, dict[str, Any]] = {}
    reasoning: dict[int, dict[str, Any]] = {}
    stop_reason: str | None = None
    usage: dict[str, Any] | None = None
    received = False
    try:
        while True:
            kind, value = await queue.get()
            if kind == "done":
                break
            if kind == "error":
                raise failed_mid_stream(hooks, context.translate(value, mid_stream=received)) from None
            received = True
            if "contentBlockStart" in value:
                block = value["contentBlockStart"]
                tool_use = (block.get("start") or {}).get("toolUse")
                if tool_use:
                    slots[int(block.get("contentBlockIndex", len(slots)))] = {
                        "id": tool_use.get("toolUseId") or f"tooluse_{uuid.uuid4().hex[:22]}",
                        "name": tool_use.get("name") or "",
                        "parts": [],
                    }
            elif "contentBlockDelta" in value:
                block = value["contentBlockDelta"]
                delta = block.get("delta") or {}
                if delta.get("text"):
                    yield TextDelta(delta["text"])
                elif "toolUse" in delta:
                    index = int(block.get("contentBlockIndex", 0))
                    slot = slots.setdefault(index, {"id": f"tooluse_{uuid.uuid4().hex[:22]}", "name": "", "parts": []})
                    slot["parts"].append(str((delta.get("toolUse") or {}).get("input") or ""))
                elif "reasoningContent" in delta:
                    piece = delta["reasoningContent"] or {}
                    index = int(block.get("contentBlockIndex", 0))
                    slot = reasoning.get(index)
                    if slot is None:
                        slot = reasoning[index] = {"parts": [], "signature": "", "redacted": b""}
                    if piece.get("text"):
                        slot["parts"].append(piece["text"])
                        yield ReasoningDelta(piece["text"])
                    if piece.get("signature"):
                        slot["signature"] = piece["signature"]
                    if piece.get("redactedContent"):
                        slot["redacted"] += piece["redactedContent"]
            elif "messageStop" in value:
                stop_reason = str(value["messageStop"].get("stopReason") or "end_turn")
            elif "metadata" in value:
                usage = value["metadata"].get("usage") or {}
    finally:
        stop.set()
        stream_body = holder.get("stream")
        if stream_body is not None and worker.is_alive():
            with contextlib.suppress(Exception):
                stream_body.close()  # ends the worker's blocking read when the caller stops early

    if stop_reason is None:
        raise ended_early(hooks, context.host)
    calls = [_tool_call(slots[index]) for index in sorted(slots)]
    for call in calls:
        yield call
    state = _reasoning_state(reasoning)
    if state is not None:
        yield state
    if usage is not None:
        yield Usage(
            input_tokens=int(usage.get("inputTokens") or 0),
            output_tokens=int(usage.get("outputTokens") or 0),
            cache_read_tokens=int(usage.get("cacheReadInputTokens") or 0),
            cache_write_tokens=int(usage.get("cacheWriteInputTokens") or 0),
        )
    for event in summary_events(hooks):
        yield event
    yield TurnEnd(stop_reason="tool_use" if calls else STOP_REASONS.get(stop_reason, "end_turn"))


def _tool_call(slot: dict[str, Any]) -> ToolCallRequest:
    return tool_call_from_fragments(call_id=slot["id"], name=slot["name"], fragments=slot["parts"])


def _reasoning_state(reasoning: dict[int, dict[str, Any]]) -> ReasoningState | None:
    """The answer's signed or redacted reasoning blocks, in order (JSON-ready: redactedContent as base64)."""
    blocks: list[dict[str, Any]] = []
    for index in sorted(reasoning):
        slot = reasoning[index]
        if slot["redacted"]:
            blocks.append({"redactedContent": base64.b64encode(slot["redacted"]).decode()})
        elif slot["signature"]:  # unsigned reasoning (a cut stream, a model that does not sign) cannot go back
            blocks.append({"text": "".join(slot["parts"]), "signature": slot["signature"]})
    return ReasoningState(kind=REASONING_KIND, blocks=tuple(blocks)) if blocks else None


class _ErrorContext:
    """Turns botocore errors into ModelCallErrors that say what to do, without secrets."""

    def __init__(self, *, provider: Provider, model: LanguageModel, secret: str, endpoint: str) -> None:
        self.provider = provider
        self.model = model
        self.secret = secret
        self.host = endpoint_host(endpoint) if endpoint else "Bedrock"

    def scrub(self, text: str) -> str:
        """Remove the secret (and any access key id but its last 4 characters) from a text, and keep it short."""
        if self.secret:
            text = text.replace(self.secret, "****")
        text = re.sub(r"\b((?:AKIA|ASIA)[A-Z0-9]{8,})([A-Z0-9]{4})\b", r"****\2", text)
        text = re.sub(r"(Signature=)[0-9a-f]+", r"\1****", text)
        text = " ".join(text.split())
        return text[:VENDOR_MESSAGE_CHARS] + ("..." if len(text) > VENDOR_MESSAGE_CHARS else "")

    def translate(self, exc: BaseException, *, mid_stream: bool) -> ModelCallError:
        """The ModelCallError for a botocore (or transport) error."""
        name = self.provider.name
        if isinstance(exc, boto_errors.ClientError):
            return self._client_error(exc)
        if isinstance(exc, boto_errors.NoCredentialsError | boto_errors.PartialCredentialsError):
            return ModelCallError(
                f"Provider {name!r} uses the server's ambient AWS credentials, but none were found (environment, "
                "shared config, instance or pod role): give the server a role, or store an access key on the provider."
            )
        if isinstance(exc, boto_errors.NoRegionError):
            return ModelCallError(f"Provider {name!r} has no AWS region: set one (e.g. us-east-1).")
        if isinstance(exc, boto_errors.ConnectTimeoutError):
            return ModelCallError(
                f"TCP connect to {self.host} timed out: egress from the control plane is blocked, check the "
                "NetworkPolicy / firewall (or the VPC endpoint for Bedrock).",
                retryable=True,
            )
        if isinstance(exc, boto_errors.ReadTimeoutError):
            return ModelCallError(
                f"Timed out waiting for {self.host} (limit {_timeout_seconds():g} s): the model may be overloaded; "
                "try again, or raise AIRLOCK_PROVIDER_TIMEOUT_SECONDS.",
                retryable=True,
            )
        if isinstance(exc, boto_errors.EndpointConnectionError):
            if mid_stream:
                return self._dropped()
            return ModelCallError(
                f"Cannot connect to {self.host}: is the endpoint right and is egress to it allowed?", retryable=True
            )
        if isinstance(exc, boto_errors.ParamValidationError):
            return ModelCallError(
                f"The request for model {self.model.identifier!r} is not valid: {self.scrub(str(exc))}"
            )
        if isinstance(exc, ValueError) and "endpoint" in str(exc).lower():
            return ModelCallError(f"The base URL of provider {name!r} is not a valid URL: fix it.")
        if mid_stream or isinstance(exc, boto_errors.ResponseStreamingError | boto_errors.IncompleteReadError):
            return self._dropped()
        reason = self.scrub(str(exc) or type(exc).__name__)
        return ModelCallError(f"Cannot call Bedrock at {self.host}: {reason}", retryable=True)

    def _dropped(self) -> ModelCallError:
        return ModelCallError(
            f"The connection to {self.host} dropped in the middle of the answer: try again.", retryable=True
        )

    def _client_error(self, exc: boto_errors.ClientError) -> ModelCallError:
        error = exc.response.get("Error") or {}
        metadata = exc.response.get("ResponseMetadata") or {}
        code = str(error.get("Code") or "")
        lowered = code.lower()
        http_status = int(metadata.get("HTTPStatusCode") or 0)
        status = http_status if http_status >= 400 else ERROR_STATUS.get(lowered)
        detail = self.scrub(str(error.get("Message") or code))
        name = self.provider.name
        identifier = self.model.identifier
        how = "the server's ambient AWS role" if self.provider.use_ambient_credentials else "the stored access key"
        if lowered in REJECTED_CREDENTIALS:
            return ModelCallError(
                f"{status or 403}: the AWS credentials were rejected by {self.host} ({code}: "
                f"{REJECTED_CREDENTIALS[lowered]}): check {how} of provider {name!r} (access key id and secret access "
                "key).",
                status=status or 403,
            )
        if lowered == "accessdeniedexception":
            return ModelCallError(
                f"403: the AWS credentials were rejected for model {identifier!r}: {how} lacks "
                f"bedrock:InvokeModelWithResponseStream, or model access is not enabled in region "
                f"{self.provider.region or '(default)'} ({detail}).",
                status=403,
            )
        if lowered == "resourcenotfoundexception":
            return ModelCallError(
                f"404: {self.host} does not serve model {identifier!r}: check the model id and the region ({detail}).",
                status=404,
            )
        if lowered == "validationexception":
            return ModelCallError(f"400: Bedrock rejected the request for model {identifier!r}: {detail}", status=400)
        if lowered in ("throttlingexception", "servicequotaexceededexception", "modelnotreadyexception"):
            retry_after = _retry_after(metadata)
            wait = f"retry after {retry_after:g} s" if retry_after is not None else "try again later"
            return ModelCallError(
                f"429: throttled by {self.host} ({wait}): {detail}",
                status=429,
                retryable=True,
                retry_after=retry_after,
            )
        if lowered == "modelstreamerrorexception":
            return ModelCallError(
                f"Model {identifier!r} failed in the middle of its answer at {self.host}: {detail}",
                status=status,
                retryable=True,
            )
        if status is not None and (status in (408, 409) or status >= 500):
            return ModelCallError(
                f"{status}: {self.host} failed to answer ({code}): {detail}", status=status, retryable=True
            )
        return ModelCallError(f"{status or 400}: {self.host} rejected the request ({code}): {detail}", status=status)


def _retry_after(metadata: dict[str, Any]) -> float | None:
    headers = metadata.get("HTTPHeaders") or {}
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
