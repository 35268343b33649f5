"""A loopback Amazon Bedrock Runtime: `POST /model/{modelId}/converse-stream`, as boto3's `converse_stream` calls it.

Streams the binary `application/vnd.amazon.eventstream` framing (prelude with total and headers length and its
CRC32; `:event-type`, `:content-type`, `:message-type` headers; a JSON payload; the message CRC32) with the
Converse events messageStart, contentBlockStart (toolUse), contentBlockDelta (text, reasoningContent, toolUse
input as partial JSON), contentBlockStop, messageStop and metadata (usage). Errors are AWS's: an
`x-amzn-ErrorType` header and a JSON `{"message"}` body, or an exception event in the middle of the stream.

Every request must carry a SigV4 `Authorization` header: the fake looks up the access key id it names among
`credentials` and recomputes the signature with that key's secret, so a test proves which credentials signed.

Extra turn keys: `error.code` (an AWS error code overriding the one the status implies) and `stream_error`
({"code": "modelStreamErrorException", "message": "..."}: an exception event after the text).

Extended thinking (Claude on Bedrock) is checked as Converse checks it: streamed `reasoning` ends with a
`signature` delta that only this fake can issue (a `redacted_reasoning` turn key adds a `redactedContent` block),
reasoning sent back with a wrong signature is refused, and with `additionalModelRequestFields.thinking` enabled a
request answering an assistant turn's tool calls (the last message holds only toolResult blocks) is refused with
a 400 ValidationException unless that assistant turn starts with its reasoningContent blocks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import struct
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

from tests.fakes import ScriptedHandler, ScriptedServer, estimate_tokens, text_pieces, turn_usage

STREAM_PATH = re.compile(r"^/model/(?P<model>[^/]+)/converse-stream$")
CONVERSE_PATH = re.compile(r"^/model/(?P<model>[^/]+)/converse$")
FOUNDATION_MODELS_PATH = re.compile(r"^/foundation-models(?:/(?P<model>[^/]+))?$")
DEFAULT_FOUNDATION_MODELS = (
    "anthropic.claude-3-5-sonnet-20241022-v2:0",
    "amazon.nova-pro-v1:0",
    "meta.llama3-1-70b-instruct-v1:0",
)
EVENTSTREAM = "application/vnd.amazon.eventstream"
ERROR_NAMESPACE = "http://internal.amazon.com/coral/com.amazon.bedrock/"
AUTH_HEADER = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key_id>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request,"
    r"\s*SignedHeaders=(?P<signed>[^,]+),\s*Signature=(?P<signature>[0-9a-f]{64})$"
)

ERROR_CODES: dict[int, tuple[str, str]] = {
    400: ("ValidationException", "The provided request is not valid."),
    403: ("AccessDeniedException", "You don't have access to the model with the specified model ID."),
    404: ("ResourceNotFoundException", "The requested resource could not be found."),
    408: ("ModelTimeoutException", "The request took too long to process."),
    424: ("ModelErrorException", "The model returned an error."),
    429: ("ThrottlingException", "Too many requests, please wait before trying your request again."),
    500: ("InternalServerException", "The server encountered an internal error."),
    503: ("ServiceUnavailableException", "The service is temporarily unable to handle the request."),
}
STOP_REASONS = {"tool_use", "end_turn", "max_tokens", "stop_sequence", "guardrail_intervened", "content_filtered"}
# Reasoning signatures are made with one key per process: every fake Bedrock accepts what another one signed.
_REASONING_KEY = secrets.token_bytes(32)
MISSING_REASONING_MESSAGE = (
    "The model returned the following errors: messages.{position}.content.0.type: Expected `thinking` or "
    "`redacted_thinking`, but found `{found}`. When `thinking` is enabled, a final `assistant` message must start "
    "with a thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks). We recommend you "
    "include thinking blocks from previous turns. To avoid this requirement, disable `thinking`. Please consult "
    "our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
)


def reasoning_signature(text: str) -> str:
    """The signature this fake gives a reasoning block (it covers the block's text)."""
    mac = hmac.new(_REASONING_KEY, b"reasoning\0" + text.encode(), hashlib.sha256).digest()
    return base64.b64encode(b"airlock-fake-bedrock:" + mac).decode()


def redacted_content(label: str) -> bytes:
    """The encrypted-looking `redactedContent` of a reasoning block that hides `label`."""
    payload = label.encode()
    return payload + hmac.new(_REASONING_KEY, b"redacted\0" + payload, hashlib.sha256).digest()


def _content_type(block: Any) -> str:
    """A Converse content block's kind, in the Messages API words Claude's errors use."""
    names = {"reasoningContent": "thinking", "toolUse": "tool_use", "toolResult": "tool_result", "text": "text"}
    key = next(iter(block), "") if isinstance(block, dict) and block else ""
    return names.get(key, key or "nothing")


def reasoning_error(body: dict[str, Any]) -> str | None:
    """Why Converse would refuse this request's reasoning blocks (None when it would accept them)."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    for position, message in enumerate(messages):
        for index, block in enumerate(message.get("content") or [] if message.get("role") == "assistant" else []):
            reasoning = block.get("reasoningContent") if isinstance(block, dict) else None
            if not isinstance(reasoning, dict):
                continue
            if "redactedContent" in reasoning:
                try:
                    raw = base64.b64decode(reasoning["redactedContent"], validate=True)
                except (binascii.Error, TypeError, ValueError):
                    raw = b""
                if len(raw) <= 32 or not hmac.compare_digest(raw, redacted_content(raw[:-32].decode(errors="replace"))):
                    return f"messages.{position}.content.{index}: Invalid `data` in `redacted_thinking` block"
                continue
            text_block = reasoning.get("reasoningText") or {}
            signature = text_block.get("signature")
            expected = reasoning_signature(str(text_block.get("text") or ""))
            if not isinstance(signature, str) or not hmac.compare_digest(signature, expected):
                return f"messages.{position}.content.{index}: Invalid `signature` in `thinking` block"
    thinking = ((body.get("additionalModelRequestFields") or {}).get("thinking")) or {}
    if thinking.get("type") != "enabled" or len(messages) < 2:
        return None
    last, previous = messages[-1], messages[-2]
    results, content = last.get("content") or [], previous.get("content") or []
    if last.get("role") != "user" or not results or not all(_content_type(b) == "tool_result" for b in results):
        return None
    if previous.get("role") != "assistant" or not any(_content_type(b) == "tool_use" for b in content):
        return None
    found = _content_type(content[0])
    if found == "thinking":
        return None
    return MISSING_REASONING_MESSAGE.format(position=len(messages) - 2, found=found)


def _header(name: str, value: str) -> bytes:
    """One eventstream header of type string (7): name length, name, type, value length, value."""
    name_bytes, value_bytes = name.encode(), value.encode()
    return struct.pack("!B", len(name_bytes)) + name_bytes + struct.pack("!BH", 7, len(value_bytes)) + value_bytes


def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One `application/vnd.amazon.eventstream` message: prelude, prelude CRC, headers, payload, message CRC."""
    header_bytes = b"".join(_header(name, value) for name, value in headers.items())
    total_length = 4 + 4 + 4 + len(header_bytes) + len(payload) + 4
    prelude = struct.pack("!II", total_length, len(header_bytes))
    prelude_crc = struct.pack("!I", binascii.crc32(prelude) & 0xFFFFFFFF)
    message = prelude + prelude_crc + header_bytes + payload
    return message + struct.pack("!I", binascii.crc32(message) & 0xFFFFFFFF)


def event(event_type: str, payload: dict[str, Any]) -> bytes:
    """A Converse stream event message."""
    headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
    return encode_message(headers, json.dumps(payload).encode())


def exception_event(code: str, message: str) -> bytes:
    """An exception message in the middle of a stream (e.g. modelStreamErrorException)."""
    headers = {":exception-type": code, ":content-type": "application/json", ":message-type": "exception"}
    return encode_message(headers, json.dumps({"message": message}).encode())


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def sigv4_signature(
    *, method: str, path: str, headers: dict[str, str], signed: list[str], body: bytes, secret: str, scope: dict
) -> str:
    """The SigV4 signature of a received request, computed with `secret` (AWS's algorithm, step by step)."""
    raw_path, _, query = path.partition("?")
    pairs = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in parse_qsl(query, keep_blank_values=True))
    canonical_query = "&".join(f"{k}={v}" for k, v in pairs)
    canonical_headers = "".join(f"{name}:{' '.join(headers.get(name, '').split())}\n" for name in signed)
    payload_hash = headers.get("x-amz-content-sha256") or _sha256(body)
    canonical_path = "/".join(quote(segment, safe="-_.~") for segment in raw_path.split("/"))  # encoded twice
    canonical = "\n".join([method, canonical_path, canonical_query, canonical_headers, ";".join(signed), payload_hash])
    timestamp = headers.get("x-amz-date", "")
    credential_scope = f"{scope['date']}/{scope['region']}/{scope['service']}/aws4_request"
    string_to_sign = "\n".join(["AWS4-HMAC-SHA256", timestamp, credential_scope, _sha256(canonical.encode())])
    key = _hmac(f"AWS4{secret}".encode(), scope["date"])
    for part in (scope["region"], scope["service"], "aws4_request"):
        key = _hmac(key, part)
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


class BedrockHandler(ScriptedHandler):
    """Routes Bedrock Runtime requests."""

    server_version = "AirlockFakeBedrock/1.0"

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        """Stream a scripted turn for converse-stream."""
        raw = self.read_body()
        if raw is None:
            return
        fake: FakeBedrock = self.server.owner  # type: ignore[assignment]
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            fake.record(self, raw.decode(errors="replace"), accepted=False)
            self._send_error(400, "SerializationException", "Could not parse the request body as JSON.")
            return
        path = self.path.split("?", 1)[0]
        converse = CONVERSE_PATH.match(path)
        if converse is not None:
            self._converse(raw, body, unquote(converse.group("model")))
            return
        match = STREAM_PATH.match(path)
        if match is None:
            fake.record(self, body, accepted=False)
            self._send_error(404, "UnknownOperationException", f"Unknown operation {path}.")
            return
        if not self._authenticated(raw):
            fake.record(self, body, accepted=False)
            return
        refusal = reasoning_error(body)
        if refusal is not None:  # refused before the model runs: the scripted turn is left for the next request
            fake.record(self, body, accepted=False)
            self._send_error(400, "ValidationException", refusal)
            return
        fake.record(self, body, accepted=True)
        fake.record_model(unquote(match.group("model")))
        turn = fake.next_turn()
        if turn.get("delay"):
            time.sleep(float(turn["delay"]))
        error = turn.get("error")
        if error:
            status = int(error.get("status", 500))
            default_code, default_message = ERROR_CODES.get(status, ("InternalServerException", "Error."))
            headers = {}
            if error.get("retry_after") is not None:
                headers["Retry-After"] = str(error["retry_after"])
            self._send_error(
                status, error.get("code") or default_code, error.get("message") or default_message, headers
            )
            return
        self.stream_chunks(_events(body, turn), turn, EVENTSTREAM)

    def _authenticated(self, raw: bytes) -> bool:
        """Check the SigV4 Authorization header against the known credentials, as AWS does."""
        fake: FakeBedrock = self.server.owner  # type: ignore[assignment]
        header = self.headers.get("Authorization") or ""
        match = AUTH_HEADER.match(header.strip())
        if match is None:
            self._send_error(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
            return False
        key_id = match.group("key_id")
        fake.note_key_id(key_id)
        secret = fake.credentials.get(key_id)
        if secret is None:
            self._send_error(
                403, "UnrecognizedClientException", "The security token included in the request is invalid."
            )
            return False
        headers = {name.lower(): value for name, value in self.headers.items()}
        signed = match.group("signed").split(";")
        expected = sigv4_signature(
            method=self.command,
            path=self.path,
            headers=headers,
            signed=signed,
            body=raw,
            secret=secret,
            scope=match.groupdict(),
        )
        if not hmac.compare_digest(expected, match.group("signature")):
            self._send_error(
                403,
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided. Check your AWS "
                "Secret Access Key and signing method. Consult the service documentation for details.",
            )
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        """The Bedrock control plane: ListFoundationModels and GetFoundationModel (what a connectivity check calls)."""
        fake: FakeBedrock = self.server.owner  # type: ignore[assignment]
        path = self.path.split("?", 1)[0]
        match = FOUNDATION_MODELS_PATH.match(path)
        if match is None:
            fake.record(self, None, accepted=False)
            self._send_error(404, "UnknownOperationException", f"Unknown operation {path}.")
            return
        if not self._authenticated(b""):
            fake.record(self, None, accepted=False)
            return
        fake.record(self, None, accepted=True)
        error = fake.control_error
        if error:
            self._send_scripted_error(error)
            return
        served = sorted(fake.served_models) if fake.served_models is not None else list(DEFAULT_FOUNDATION_MODELS)
        model = unquote(match.group("model") or "")
        if not model:
            self._send_json(200, {"modelSummaries": [_model_summary(name) for name in served]})
        elif fake.served_models is None or model in fake.served_models:
            self._send_json(200, {"modelDetails": _model_summary(model)})
        else:
            self._send_error(
                404,
                "ResourceNotFoundException",
                "Could not resolve the foundation model from the provided model identifier.",
            )

    def _converse(self, raw: bytes, body: dict[str, Any], model: str) -> None:
        """Answer one non-streamed Converse call with a scripted turn (cut to inferenceConfig.maxTokens)."""
        fake: FakeBedrock = self.server.owner  # type: ignore[assignment]
        if not self._authenticated(raw):
            fake.record(self, body, accepted=False)
            return
        fake.record(self, body, accepted=True)
        fake.record_model(model)
        if fake.served_models is not None and model not in fake.served_models:
            self._send_error(400, "ValidationException", "The provided model identifier is invalid.")
            return
        turn = fake.next_turn()
        if turn.get("delay"):
            time.sleep(float(turn["delay"]))
        if turn.get("error"):
            self._send_scripted_error(turn["error"])
            return
        self._send_json(200, _converse_response(body, turn))

    def _send_scripted_error(self, error: dict[str, Any]) -> None:
        """An AWS error from a scripted {"status", "code", "message", "retry_after"}."""
        status = int(error.get("status", 500))
        default_code, default_message = ERROR_CODES.get(status, ("InternalServerException", "Error."))
        headers = {}
        if error.get("retry_after") is not None:
            headers["Retry-After"] = str(error["retry_after"])
        self._send_error(status, error.get("code") or default_code, error.get("message") or default_message, headers)

    def _send_json(self, status: int, payload: Any) -> None:
        self.send_bytes(
            status, json.dumps(payload).encode(), "application/json", {"x-amzn-RequestId": str(uuid.uuid4())}
        )

    def _send_error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        all_headers = {"x-amzn-ErrorType": f"{code}:{ERROR_NAMESPACE}", "x-amzn-RequestId": str(uuid.uuid4())}
        all_headers.update(headers or {})
        self.send_bytes(status, json.dumps({"message": message}).encode(), "application/json", all_headers)


def _events(body: dict[str, Any], turn: dict[str, Any]) -> list[bytes]:
    """The eventstream messages of one scripted turn."""
    calls = turn.get("tool_calls") or []
    output = str(turn.get("text") or "") + str(turn.get("reasoning") or "") + json.dumps(calls)
    usage = turn_usage(turn, prompt_text=json.dumps(body.get("messages") or []), output_text=output)
    frames = [event("messageStart", {"role": "assistant"})]
    index = 0
    reasoning = text_pieces(turn, "reasoning")
    if reasoning:
        for piece in reasoning:
            delta = {"reasoningContent": {"text": piece}}
            frames.append(event("contentBlockDelta", {"contentBlockIndex": index, "delta": delta}))
        delta = {"reasoningContent": {"signature": reasoning_signature(str(turn.get("reasoning")))}}
        frames.append(event("contentBlockDelta", {"contentBlockIndex": index, "delta": delta}))
        frames.append(event("contentBlockStop", {"contentBlockIndex": index}))
        index += 1
    if turn.get("redacted_reasoning"):
        hidden = base64.b64encode(redacted_content(str(turn["redacted_reasoning"]))).decode()
        delta = {"reasoningContent": {"redactedContent": hidden}}
        frames.append(event("contentBlockDelta", {"contentBlockIndex": index, "delta": delta}))
        frames.append(event("contentBlockStop", {"contentBlockIndex": index}))
        index += 1
    pieces = text_pieces(turn)
    if pieces:
        for piece in pieces:
            frames.append(event("contentBlockDelta", {"contentBlockIndex": index, "delta": {"text": piece}}))
        frames.append(event("contentBlockStop", {"contentBlockIndex": index}))
        index += 1
    if turn.get("stream_error"):
        stream_error = turn["stream_error"]
        frames.append(
            exception_event(stream_error.get("code", "modelStreamErrorException"), stream_error.get("message", ""))
        )
        return frames
    for call in calls:
        arguments = call.get("arguments", {})
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        start = {
            "toolUse": {
                "toolUseId": call.get("id") or f"tooluse_{uuid.uuid4().hex[:22]}",
                "name": call.get("name", "execute"),
            }
        }
        frames.append(event("contentBlockStart", {"contentBlockIndex": index, "start": start}))
        step = max(1, -(-len(arguments) // 3))  # three fragments of partial JSON
        for position in range(0, len(arguments), step):
            delta = {"toolUse": {"input": arguments[position : position + step]}}
            frames.append(event("contentBlockDelta", {"contentBlockIndex": index, "delta": delta}))
        frames.append(event("contentBlockStop", {"contentBlockIndex": index}))
        index += 1
    stop_reason = turn.get("finish_reason") or ("tool_use" if calls else "end_turn")
    frames.append(event("messageStop", {"stopReason": stop_reason}))
    metadata_usage = {
        "inputTokens": usage["input_tokens"],
        "outputTokens": usage["output_tokens"],
        "totalTokens": usage["input_tokens"]
        + usage["output_tokens"]
        + usage["cache_read_tokens"]
        + usage["cache_write_tokens"],
    }
    if usage["cache_read_tokens"]:
        metadata_usage["cacheReadInputTokens"] = usage["cache_read_tokens"]
    if usage["cache_write_tokens"]:
        metadata_usage["cacheWriteInputTokens"] = usage["cache_write_tokens"]
    frames.append(event("metadata", {"usage": metadata_usage, "metrics": {"latencyMs": 12}}))
    return frames


def _model_summary(model_id: str) -> dict[str, Any]:
    """A FoundationModelSummary (ListFoundationModels) / FoundationModelDetails (GetFoundationModel) for a model id."""
    provider = model_id.split(".", 1)[0] if "." in model_id else "amazon"
    return {
        "modelArn": f"arn:aws:bedrock:us-east-1::foundation-model/{model_id}",
        "modelId": model_id,
        "modelName": model_id,
        "providerName": provider.title(),
        "inputModalities": ["TEXT"],
        "outputModalities": ["TEXT"],
        "responseStreamingSupported": True,
        "customizationsSupported": [],
        "inferenceTypesSupported": ["ON_DEMAND"],
        "modelLifecycle": {"status": "ACTIVE"},
    }


def _converse_response(body: dict[str, Any], turn: dict[str, Any]) -> dict[str, Any]:
    """The Converse (non-streamed) answer of a scripted turn; text beyond inferenceConfig.maxTokens is cut off."""
    calls = turn.get("tool_calls") or []
    text = str(turn.get("text") or "")
    reasoning = str(turn.get("reasoning") or "")
    max_tokens = (body.get("inferenceConfig") or {}).get("maxTokens")
    stop_reason = turn.get("finish_reason") or ("tool_use" if calls else "end_turn")
    if max_tokens is not None and estimate_tokens(text) > int(max_tokens):
        text, calls, stop_reason = text[: int(max_tokens) * 4], [], "max_tokens"
    content: list[dict[str, Any]] = []
    if reasoning:
        content.append({"reasoningContent": {"reasoningText": {"text": reasoning}}})
    if text:
        content.append({"text": text})
    for call in calls:
        arguments = call.get("arguments", {})
        content.append(
            {
                "toolUse": {
                    "toolUseId": call.get("id") or f"tooluse_{uuid.uuid4().hex[:22]}",
                    "name": call.get("name", "execute"),
                    "input": json.loads(arguments) if isinstance(arguments, str) else arguments,
                }
            }
        )
    usage = turn_usage(turn, prompt_text=json.dumps(body.get("messages") or []), output_text=text + reasoning)
    return {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop_reason,
        "usage": {
            "inputTokens": usage["input_tokens"],
            "outputTokens": usage["output_tokens"],
            "totalTokens": usage["input_tokens"] + usage["output_tokens"],
        },
        "metrics": {"latencyMs": 12},
    }


class FakeBedrock(ScriptedServer):
    """A scripted Bedrock Runtime on loopback; point boto3 at it with `endpoint_url=server.base_url`.

    `credentials` maps the access key ids it accepts to their secrets.
    """

    handler_class = BedrockHandler
    thread_name = "fake-bedrock"
    # Connectivity-check switches, set on an instance. served_models: the model ids that exist (None: any model;
    # Converse on another answers 400 ValidationException, GetFoundationModel 404). control_error: what every
    # authenticated control-plane GET answers, e.g. {"status": 403, "code": "AccessDeniedException"}.
    served_models: set[str] | None = None
    control_error: dict[str, Any] | None = None

    def __init__(
        self, script: list[dict[str, Any]] | None = None, *, credentials: dict[str, str] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(script, **kwargs)
        self.credentials = dict(credentials or {})
        self.key_ids_seen: list[str] = []
        self.models_seen: list[str] = []

    def note_key_id(self, key_id: str) -> None:
        """Remember which access key id signed a request."""
        with self._lock:
            self.key_ids_seen.append(key_id)

    def record_model(self, model_id: str) -> None:
        """Remember which model a request asked for (the path holds it, URL-encoded)."""
        with self._lock:
            self.models_seen.append(model_id)

    def masked_header(self, name: str, value: str) -> str:
        """Keep the SigV4 header readable (key id, scope, signed headers) but mask the signature."""
        if name == "authorization" and value.startswith("AWS4-HMAC-SHA256"):
            return re.sub(r"Signature=[0-9a-f]+", "Signature=****", value)
        return super().masked_header(name, value)
