"""The local backend runs real shell commands in a per-workspace directory, within limits."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import time

import pytest

from tests.workspaces.conftest import Lines, child_pid, unsaved_workspace, wait_until_gone
from workspaces.backends import ExecutionError, get_backend
from workspaces.backends.local import LocalBackend

CAP = 256 * 1024


@pytest.fixture
def backend() -> LocalBackend:
    """The backend as the registry hands it out."""
    return get_backend("local")


@pytest.fixture
def bare(backend: LocalBackend):
    """A prepared workspace directory, without any database row."""
    workspace = unsaved_workspace()
    workspace.directory = backend.directory_for(workspace)
    backend.prepare(workspace)
    return workspace


async def run(backend: LocalBackend, workspace, command: str, lines: Lines, *, limit: float = 10, cap: int = CAP):
    return await backend.run(workspace=workspace, command=command, timeout=limit, output_cap=cap, on_line=lines)


async def test_echo_hello_exits_zero_and_streams_the_line(backend, bare, lines):
    result = await run(backend, bare, "echo hello", lines)

    assert result.exit_code == 0
    assert not result.timed_out
    assert lines.lines == ["hello"]
    assert result.output == "hello\n"
    assert result.output_bytes == 6
    assert result.output_sha256 == hashlib.sha256(b"hello\n").hexdigest()


async def test_stdout_and_stderr_both_arrive_in_the_order_produced(backend, bare, lines):
    result = await run(backend, bare, "echo out; echo err >&2; echo out-again", lines)

    assert result.exit_code == 0
    assert lines.lines == ["out", "err", "out-again"]


async def test_non_zero_exit_code_is_kept(backend, bare, lines):
    result = await run(backend, bare, "echo failing; exit 3", lines)

    assert result.exit_code == 3
    assert not result.timed_out
    assert not result.succeeded
    assert lines.lines == ["failing"]


async def test_command_past_the_timeout_is_killed_with_its_children(backend, bare, lines):
    started = time.monotonic()
    result = await run(backend, bare, "sleep 30 & echo child=$!; sleep 30; echo never", lines, limit=1)
    elapsed = time.monotonic() - started

    assert result.timed_out
    assert not result.succeeded
    assert result.exit_code is not None and result.exit_code < 0  # killed by a signal
    assert elapsed < 8
    assert "never" not in lines.lines
    assert wait_until_gone(child_pid(lines.lines)), "the background child outlived the timeout"


async def test_background_process_left_behind_is_stopped_when_the_command_ends(backend, bare, lines):
    started = time.monotonic()
    result = await run(backend, bare, "sleep 30 & echo child=$!; echo done", lines, limit=20)

    assert result.exit_code == 0
    assert not result.timed_out
    assert time.monotonic() - started < 8  # did not wait for the background sleep or the timeout
    assert lines.lines[-1] == "done"
    assert wait_until_gone(child_pid(lines.lines))


async def test_a_workspace_memory_limit_stops_a_large_allocation_on_the_local_backend_too(backend, bare, lines):
    bare.memory_limit_mb = 128
    allocate = 'python3 -c "b = bytearray({size} * 1024 * 1024); print(len(b) // 1048576)"'

    refused = await run(backend, bare, allocate.format(size=512), lines)
    bare.memory_limit_mb = 1024
    allowed = await run(backend, bare, allocate.format(size=64), lines)

    assert refused.exit_code != 0 and "MemoryError" in refused.output
    assert allowed.exit_code == 0 and allowed.output == "64\n"


async def test_cancelling_a_run_kills_the_command_and_its_children(backend, bare, lines):
    task = asyncio.create_task(run(backend, bare, "sleep 30 & echo child=$!; wait", lines, limit=30))
    await asyncio.wait_for(lines.seen.wait(), timeout=5)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert wait_until_gone(child_pid(lines.lines))


async def test_output_beyond_the_cap_is_counted_and_hashed_but_not_streamed(backend, bare, lines):
    produced = b"abcdefghi\n" * 1000  # 10,000 bytes

    result = await run(backend, bare, "yes abcdefghi | head -n 1000", lines, cap=1005)

    assert result.exit_code == 0
    assert result.output_truncated
    assert lines.lines[:-1] == ["abcdefghi"] * 100 + ["abcde"]
    assert lines.lines[-1] == "[output truncated at 1005 bytes]"
    assert result.output == produced[:1005].decode()
    assert result.output_bytes == len(produced)
    assert result.output_sha256 == hashlib.sha256(produced).hexdigest()
    assert result.output_head == produced[:4096].decode()
    assert result.output_tail == produced[-4096:].decode()


async def test_output_exactly_at_the_cap_is_not_marked_truncated(backend, bare, lines):
    result = await run(backend, bare, "printf 'abcd\\n'", lines, cap=5)

    assert not result.output_truncated
    assert lines.lines == ["abcd"]


async def test_long_line_without_newline_arrives_in_pieces_of_at_most_8_kib(backend, bare, lines):
    result = await run(backend, bare, "head -c 20000 /dev/zero | tr '\\0' 'a'", lines)

    assert result.exit_code == 0
    assert all(len(line) <= 8192 for line in lines.lines)
    assert len(lines.lines) >= 3
    assert "".join(lines.lines) == "a" * 20000


async def test_server_environment_does_not_leak_into_commands(backend, bare, lines, monkeypatch):
    monkeypatch.setenv("AIRLOCK_ENCRYPTION_KEYS", "canary-encryption-key")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-canary-api-key")
    monkeypatch.setenv("SECRET", "canary-secret")

    result = await run(backend, bare, "env", lines)

    assert result.exit_code == 0
    assert "canary" not in result.output
    variables = dict(line.split("=", 1) for line in lines.lines)
    assert set(variables) <= {"PATH", "HOME", "LANG", "TERM", "PWD", "OLDPWD", "SHLVL", "_"}
    assert variables["HOME"] == bare.directory
    assert variables["TERM"] == "dumb"


async def test_command_runs_in_the_workspace_directory(backend, bare, lines):
    await run(backend, bare, "pwd", lines)

    assert lines.lines == [bare.directory]


async def test_invalid_utf8_and_nul_bytes_become_replacement_characters(backend, bare, lines):
    raw = b"a\x00b\xffc\n"

    result = await run(backend, bare, "printf 'a\\000b\\377c\\n'", lines)

    assert lines.lines == ["a\ufffdb\ufffdc"]
    assert "\x00" not in result.output + result.output_head + result.output_tail
    assert result.output_bytes == len(raw)
    assert result.output_sha256 == hashlib.sha256(raw).hexdigest()


async def test_stdin_is_empty(backend, bare, lines):
    result = await run(backend, bare, "cat; echo end", lines, limit=5)

    assert not result.timed_out
    assert lines.lines == ["end"]


def test_each_workspace_gets_its_own_private_directory(backend, workspaces_root):
    first, second = unsaved_workspace(organization_id=1), unsaved_workspace(organization_id=2)
    for workspace in (first, second):
        workspace.directory = backend.directory_for(workspace)
        backend.prepare(workspace)

    assert first.directory == str(workspaces_root.absolute() / "1" / str(first.id))
    assert second.directory == str(workspaces_root.absolute() / "2" / str(second.id))
    for workspace in (first, second):
        assert stat.S_IMODE(os.stat(workspace.directory).st_mode) == 0o700


async def test_missing_directory_raises_a_clear_error(backend, lines):
    workspace = unsaved_workspace(name="gone")
    workspace.directory = backend.directory_for(workspace)  # never prepared

    with pytest.raises(ExecutionError, match="is missing"):
        await run(backend, workspace, "echo hi", lines)
    assert lines.lines == []


def test_unknown_backend_name_is_refused():
    with pytest.raises(ValueError, match="Unknown workspace backend 'docker': use one of bubblewrap, local"):
        get_backend("docker")
