"""Loopback servers that speak vendors' real wire protocols, scripted turn by turn for tests.

Every server takes the same turn format as providers/simulator.py; every key is optional:
    text            the assistant's text, streamed in pieces of `chunk_chars` characters (default 4)
    reasoning       thinking text streamed before the answer, where the protocol has it
    tool_calls      [{"name": "execute", "arguments": {"command": "ls"}, "id": "call_1"}]
    error           {"status": 429, "message": "...", "retry_after": 1}: answered instead of a stream
    delay           seconds to wait before the first byte
    chunk_delay     seconds to wait between streamed events
    usage           {"input_tokens": 10, "output_tokens": 5, "cache_read_tokens": 0, "cache_write_tokens": 0}
                    (prompt_tokens / completion_tokens are accepted too; default: estimated from characters)
    finish_reason   the vendor's own stop value, overriding the one the turn implies
    drop_after_chunks  close the connection after this many streamed events, mid-stream
"""

from __future__ import annotations

import contextlib
import socket
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

from providers.simulator import ConnectionDropped, LoopbackServer, ScriptedLoopback

DEFAULT_CHUNK_CHARS = 4
MAX_BODY_BYTES = 32 * 1024 * 1024
SECRET_HEADERS = ("authorization", "x-goog-api-key", "x-api-key", "x-amz-security-token")


def mask(secret: str) -> str:
    """What a request log may show of a presented secret: its last four characters."""
    return "****" + secret[-4:] if len(secret) >= 12 else "****"


def estimate_tokens(text: str) -> int:
    """A rough token count (four characters a token), at least one for non-empty text."""
    return max(1, round(len(text) / 4)) if text else 0


def turn_usage(turn: dict[str, Any], *, prompt_text: str, output_text: str) -> dict[str, int]:
    """The usage a turn reports: scripted values, else estimates from the characters."""
    usage = turn.get("usage") or {}
    return {
        "input_tokens": int(usage.get("input_tokens", usage.get("prompt_tokens", estimate_tokens(prompt_text)))),
        "output_tokens": int(usage.get("output_tokens", usage.get("completion_tokens", estimate_tokens(output_text)))),
        "cache_read_tokens": int(usage.get("cache_read_tokens", 0)),
        "cache_write_tokens": int(usage.get("cache_write_tokens", 0)),
    }


def text_pieces(turn: dict[str, Any], key: str = "text") -> list[str]:
    """A turn's text cut in the pieces it is streamed in."""
    text = str(turn.get(key) or "")
    size = max(1, int(turn.get("chunk_chars") or DEFAULT_CHUNK_CHARS))
    return [text[start : start + size] for start in range(0, len(text), size)]


class ScriptedHandler(BaseHTTPRequestHandler):
    """Shared plumbing: quiet logging, JSON bodies, chunked streaming, scripted drops and delays."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: LoopbackServer

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests read stdout."""

    def read_body(self) -> bytes | None:
        """The raw request body, or None (after answering 400) when its length is wrong."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self.send_bytes(400, b'{"message": "Send a body with a valid Content-Length."}', "application/json")
            return None
        return self.rfile.read(length) if length else b""

    def send_bytes(self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        """A complete (non-streamed) answer."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def stream_chunks(self, frames: list[bytes], turn: dict[str, Any], content_type: str) -> None:
        """Send frames as HTTP chunks, pacing and dropping as the turn says."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        drop_after = turn.get("drop_after_chunks")
        chunk_delay = float(turn.get("chunk_delay") or 0)
        try:
            for sent, frame in enumerate(frames):
                if drop_after is not None and sent >= int(drop_after):
                    raise ConnectionDropped
                self.wfile.write(f"{len(frame):x}\r\n".encode() + frame + b"\r\n")
                self.wfile.flush()
                if chunk_delay:
                    time.sleep(chunk_delay)
            self.wfile.write(b"0\r\n\r\n")
        except ConnectionDropped:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class ScriptedServer(ScriptedLoopback):
    """A scripted vendor server on loopback; one turn is consumed per model request."""

    handler_class: type[ScriptedHandler] = ScriptedHandler
    thread_name = "fake-vendor"

    @property
    def base_url(self) -> str:
        """The URL clients are pointed at (scheme, host and port)."""
        return self.root_url

    def next_turn(self) -> dict[str, Any]:
        """The next scripted turn (a short default answer when the script is empty)."""
        with self._lock:
            return self._turns.pop(0) if self._turns else {"text": "OK."}

    def masked_header(self, name: str, value: str) -> str:
        """A header's value as the request log shows it (secrets masked)."""
        return mask(value) if name in SECRET_HEADERS else value

    def record(self, handler: BaseHTTPRequestHandler, body: Any, *, accepted: bool) -> None:
        """Log a request; accepted ones also join `requests`."""
        headers = {name.lower(): self.masked_header(name.lower(), value) for name, value in handler.headers.items()}
        entry = {"method": handler.command, "path": handler.path, "headers": headers, "body": body}
        with self._lock:
            self._request_log.append(entry)
            if accepted:
                self._requests.append(body)


class RawStreamHandler(ScriptedHandler):
    """Answers every POST with the turn's `frames` (server-sent events written verbatim), to test odd streams."""

    server: LoopbackServer

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        """Stream the next turn's frames as text/event-stream."""
        if self.read_body() is None:
            return
        owner: RawStreamServer = self.server.owner
        turn = owner.next_turn()
        frames = [frame.encode() for frame in turn.get("frames") or []]
        self.stream_chunks(frames, turn, "text/event-stream")


class RawStreamServer(ScriptedServer):
    """A loopback server whose turns are raw server-sent-event frames: {"frames": ["data: {...}\\n\\n", ...]}."""

    handler_class = RawStreamHandler
    thread_name = "fake-raw-stream"
