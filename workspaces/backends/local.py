"""Local execution backend: each workspace is a plain directory on the Airlock host.

THIS BACKEND IS NOT A SANDBOX. Commands run as the same operating-system user as Airlock, with
the same view of the file system and the network. What it does guarantee:

- each workspace has its own directory, WORKSPACES_ROOT/<organization id>/<workspace id>, mode 0700,
  which is the command's working directory and HOME;
- the command sees a scrubbed environment (PATH, HOME, LANG, TERM=dumb and nothing else), never the
  server's, which holds AIRLOCK_ENCRYPTION_KEYS, DATABASE_URL and provider API keys;
- the command runs in its own session and process group; at the timeout the whole group gets
  SIGTERM, then SIGKILL after a short grace, and processes a command leaves behind in its group are
  killed when it ends. A process that starts its own session escapes this;
- output (stdout and stderr merged) is counted and hashed in full, captured only up to a cap.

Isolation from the host and from other workspaces (containers, VMs, seccomp, network policy) belongs
to a sandboxing backend; use this one only where every user of the deployment is trusted with a
shell on the host.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import hashlib
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings

from workspaces.backends.base import (
    HEAD_BYTES,
    LINE_PIECE_CHARS,
    TAIL_BYTES,
    ExecutionBackend,
    ExecutionError,
    ExecutionResult,
    OutputCallback,
)

if TYPE_CHECKING:
    from workspaces.models import Workspace

SHELL = "/bin/sh"
PRLIMIT = "/usr/bin/prlimit"  # util-linux, on every Debian system
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
READ_CHUNK_BYTES = 64 * 1024
# After SIGTERM at the timeout, how long the command has to exit before SIGKILL.
KILL_GRACE_SECONDS = 2.0
# After the shell exits, how long background processes still holding its output may keep writing.
DRAIN_GRACE_SECONDS = 1.0
# After the group is killed, how long to wait for the output pipe to close (a process that left the
# group may hold it open forever; then we stop reading).
OUTPUT_CLOSE_SECONDS = 2.0


def _text(data: bytes | str) -> str:
    """Decoded text safe to store anywhere: invalid UTF-8 and NUL (rejected by PostgreSQL) become U+FFFD."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return text.replace("\x00", "\ufffd")


def _tail_text(data: bytes, *, cut: bool) -> str:
    """Decode the last bytes of the output, dropping a character split by the cut."""
    if cut:
        skip = 0
        while skip < min(3, len(data)) and data[skip] & 0xC0 == 0x80:
            skip += 1
        data = data[skip:]
    return _text(data)


def memory_limit_prefix(workspace: Workspace) -> list[str]:
    """`prlimit` arguments capping the address space of the command and everything it starts, when the
    workspace has a memory limit (an allocation past it fails; no cgroup is needed)."""
    if not workspace.memory_limit_mb:
        return []
    return [PRLIMIT, f"--as={workspace.memory_limit_mb * 1024 * 1024}", "--"]


def _signal_group(pgid: int, signum: int) -> None:
    """Send a signal to a process group that may already be gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


class _OutputSink:
    """Counts and hashes every byte of output; captures up to the cap and hands it on line by line."""

    def __init__(self, *, cap: int, on_line: OutputCallback) -> None:
        self.cap = cap
        self.on_line = on_line
        self.total = 0
        self.digest = hashlib.sha256()
        self.captured = bytearray()
        self.head = bytearray()
        self.tail = bytearray()
        self.truncated = False
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""

    async def feed(self, chunk: bytes) -> None:
        """Take one chunk of output as it arrives."""
        self.digest.update(chunk)
        self.total += len(chunk)
        if len(self.head) < HEAD_BYTES:
            self.head += chunk[: HEAD_BYTES - len(self.head)]
        self.tail = (self.tail + chunk)[-TAIL_BYTES:]
        if self.truncated:
            return
        room = self.cap - len(self.captured)
        kept = chunk[:room]
        self.captured += kept
        await self._lines(self._decoder.decode(kept))
        if len(chunk) > len(kept):
            self.truncated = True
            await self._close_lines()
            await self.on_line(f"[output truncated at {self.cap} bytes]")

    async def finish(self) -> None:
        """Hand on the last line when the output ends without a newline."""
        if not self.truncated:
            await self._close_lines()

    async def _close_lines(self) -> None:
        await self._lines(self._decoder.decode(b"", final=True))
        if self._partial:
            line, self._partial = self._partial, ""
            await self.on_line(_text(line))

    async def _lines(self, text: str) -> None:
        if not text:
            return
        *complete, self._partial = (self._partial + text).split("\n")
        for line in complete:
            await self.on_line(_text(line.removesuffix("\r")))
        while len(self._partial) >= LINE_PIECE_CHARS:
            piece, self._partial = self._partial[:LINE_PIECE_CHARS], self._partial[LINE_PIECE_CHARS:]
            await self.on_line(_text(piece))


class LocalBackend(ExecutionBackend):
    """Runs commands with /bin/sh in a per-workspace directory on this host (not a sandbox)."""

    name = "local"

    def directory_for(self, workspace: Workspace) -> str:
        """WORKSPACES_ROOT/<organization id>/<workspace id>, absolute."""
        root = Path(settings.WORKSPACES_ROOT).absolute()
        return str(root / str(workspace.organization_id) / str(workspace.id))

    def prepare(self, workspace: Workspace) -> None:
        """Create the workspace's directory (owner-only access); harmless when it exists."""
        directory = Path(workspace.directory or self.directory_for(workspace))
        directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.mkdir(mode=0o700, exist_ok=True)
        directory.chmod(0o700)

    def environment(self, directory: str) -> dict[str, str]:
        """The whole environment a command sees; nothing is inherited from the server."""
        return {"PATH": SAFE_PATH, "HOME": directory, "LANG": "C.UTF-8", "TERM": "dumb"}

    def command_line(self, workspace: Workspace, directory: str, command: str) -> list[str]:
        """The program and arguments that run `command`: the shell, under the workspace's memory limit if any."""
        return [*memory_limit_prefix(workspace), SHELL, "-c", command]

    def launch(self, workspace: Workspace, directory: str, command: str, output_fd: int) -> tuple[list[str], list[int]]:
        """What to start for one command: its arguments, and descriptors it inherits (closed here after the start).

        `output_fd` is the write end of the command's output pipe."""
        return self.command_line(workspace, directory, command), []

    async def run(
        self,
        *,
        workspace: Workspace,
        command: str,
        timeout: float,  # noqa: ASYNC109 - the command's limit: its process group is killed, not just awaited
        output_cap: int,
        on_line: OutputCallback,
    ) -> ExecutionResult:
        """Run `/bin/sh -c command` in the workspace directory; see the module docstring for the guarantees."""
        directory = workspace.directory or self.directory_for(workspace)
        if not os.path.isdir(directory):  # noqa: ASYNC240 - one stat, not worth a thread
            raise ExecutionError(
                f"The directory of workspace {workspace.name!r} ({directory}) is missing: create a new workspace."
            )
        loop = asyncio.get_running_loop()
        sink = _OutputSink(cap=output_cap, on_line=on_line)
        started = time.monotonic()
        read_fd, write_fd = os.pipe()
        try:
            argv, inherited = self.launch(workspace, directory, command, write_fd)
        except BaseException:
            os.close(read_fd)
            os.close(write_fd)
            raise
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                pass_fds=inherited,
                cwd=directory,
                env=self.environment(directory),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=write_fd,
                stderr=write_fd,
                start_new_session=True,
            )
        except (OSError, ValueError) as exc:
            os.close(read_fd)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ExecutionError(f"Could not start the command in workspace {workspace.name!r}: {reason}.") from exc
        finally:
            os.close(write_fd)
            for fd in inherited:
                os.close(fd)
        waiter = asyncio.create_task(process.wait())
        transport: asyncio.ReadTransport | None = None
        pump: asyncio.Task | None = None
        deadline = started + timeout
        try:
            reader = asyncio.StreamReader()
            transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
            )
            pump = asyncio.create_task(self._pump(reader, sink))
            await asyncio.wait({waiter, pump}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if pump.done():
                pump.result()  # an on_line that fails stops the command
                if not waiter.done():  # output closed, shell still running
                    await asyncio.wait({waiter}, timeout=max(0.0, deadline - time.monotonic()))
            elif waiter.done():  # shell exited; background processes may still hold the output
                await asyncio.wait({pump}, timeout=min(DRAIN_GRACE_SECONDS, max(0.0, deadline - time.monotonic())))
                if pump.done():
                    pump.result()
            timed_out = not waiter.done()
        finally:
            # Nothing the command started in its group outlives it, whatever ended the wait.
            await self._stop_group(process.pid, waiter)
            if pump is not None and transport is not None:
                await self._close_output(pump, transport)
        if not pump.cancelled():
            pump.result()
        await sink.finish()
        return ExecutionResult(
            exit_code=process.returncode,
            timed_out=timed_out,
            output_truncated=sink.truncated,
            output_bytes=sink.total,
            output_sha256=sink.digest.hexdigest(),
            duration_ms=int((time.monotonic() - started) * 1000),
            output_head=_text(bytes(sink.head)),
            output_tail=_tail_text(bytes(sink.tail), cut=sink.total > len(sink.tail)),
            output=_text(bytes(sink.captured)),
        )

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, sink: _OutputSink) -> None:
        while chunk := await reader.read(READ_CHUNK_BYTES):
            await sink.feed(chunk)

    @staticmethod
    async def _stop_group(pgid: int, waiter: asyncio.Task) -> None:
        """SIGTERM then SIGKILL a running command's group; SIGKILL what a finished one left behind."""
        # The group id is the shell's pid; the kernel does not reuse it while any member is alive.
        try:
            if not waiter.done():
                _signal_group(pgid, signal.SIGTERM)
                await asyncio.wait({waiter}, timeout=KILL_GRACE_SECONDS)
        finally:
            _signal_group(pgid, signal.SIGKILL)
            if not waiter.done():
                await asyncio.wait({waiter}, timeout=KILL_GRACE_SECONDS)
            if not waiter.done():
                waiter.cancel()

    @staticmethod
    async def _close_output(pump: asyncio.Task, transport: asyncio.ReadTransport) -> None:
        """Let the reader drain what the killed processes wrote, then close the pipe."""
        try:
            if not pump.done():
                await asyncio.wait({pump}, timeout=OUTPUT_CLOSE_SECONDS)
            if not pump.done():
                pump.cancel()
                await asyncio.wait({pump})
            elif not pump.cancelled():
                pump.exception()  # retrieved here; re-raised by run() on the normal path
        finally:
            transport.close()
