"""The bubblewrap backend runs each command in a real sandbox: what a command inside can see and do.

Every test but the ones about a missing bubblewrap starts real `bwrap` processes; like the browser tests
without Chromium, they skip (saying what to install) on a host without it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sandbox import let_sandbox_reach
from tests.workspaces.conftest import Lines, unsaved_workspace
from workspaces.backends import ExecutionError, bubblewrap, get_backend
from workspaces.backends.bubblewrap import PASSWD, TMP_SIZE_BYTES, BubblewrapBackend, SandboxUnavailable

CAP = 256 * 1024
INSTALL_HINT = "install Debian's `bubblewrap` package"
# What the sandbox's / may hold: the system's programs and libraries, its own /etc, /proc, /dev and /tmp.
SANDBOX_ROOT_ENTRIES = {
    *("bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr"),
    *("etc", "proc", "dev", "tmp", "workspace"),
}
THIS_FILE = Path(__file__).resolve()
SETTINGS_FILE = THIS_FILE.parents[2] / "portal" / "settings" / "base.py"


@pytest.fixture
def backend() -> BubblewrapBackend:
    """The sandbox backend as the registry hands it out, on a host where bwrap is installed."""
    if shutil.which("bwrap") is None:
        pytest.skip("needs bwrap: run scripts/install-system-packages.sh bubblewrap")
    return get_backend("bubblewrap")


def prepared(backend: BubblewrapBackend, *, organization_id: int = 1, memory_limit_mb: int | None = None):
    """A prepared workspace directory, without any database row."""
    workspace = unsaved_workspace(organization_id=organization_id)
    workspace.memory_limit_mb = memory_limit_mb
    workspace.directory = backend.directory_for(workspace)
    backend.prepare(workspace)
    return workspace


@pytest.fixture
def bare(backend: BubblewrapBackend):
    """A prepared workspace, without a memory limit."""
    return prepared(backend)


async def run(backend, workspace, command: str, lines: Lines | None = None, *, limit: float = 10, cap: int = CAP):
    return await backend.run(
        workspace=workspace, command=command, timeout=limit, output_cap=cap, on_line=lines or Lines()
    )


def host_read(path: Path) -> str:
    """A file's text as the host (the test) sees it."""
    return path.read_text()


def host_write(path: Path, text: str) -> None:
    """Write a file on the host side."""
    path.write_text(text)


def host_exists(path: Path) -> bool:
    """Whether a path exists on the host."""
    return path.exists()


def processes_with_argument(marker: str) -> set[int]:
    """Host pids of live processes (zombies aside) whose command line has `marker` as one argument."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in arguments and state not in {"Z", "X"}:
            found.add(int(entry.name))
    return found


def gone_within(marker: str, seconds: float = 5.0) -> set[int]:
    """Poll until no process carries `marker`; the pids still alive at the end (empty when all went)."""
    deadline = time.monotonic() + seconds
    while (alive := processes_with_argument(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


@pytest.fixture
def sleep_marker() -> Iterator[str]:
    """A `sleep` duration no other process uses (300 s and a random fraction); survivors are killed after."""
    marker = f"300.{secrets.randbelow(10**6):06d}"
    yield marker
    for pid in processes_with_argument(marker):  # only when the sandbox let one escape
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# 1. A command runs as the sandbox user, in /workspace, and its output and exit code come back.


async def test_command_streams_its_output_and_keeps_its_exit_code(backend, bare, lines):
    result = await run(backend, bare, "echo hello; echo oops >&2; exit 3", lines)

    assert result.exit_code == 3
    assert not result.timed_out
    assert lines.lines == ["hello", "oops"]
    assert result.output == "hello\noops\n"


async def test_command_runs_as_uid_1000_in_workspace_with_home_there_on_host_named_workspace(backend, bare, lines):
    result = await run(backend, bare, 'id -u; id -g; pwd; echo "$HOME"; hostname; whoami', lines)

    assert result.exit_code == 0
    assert lines.lines == ["1000", "1000", "/workspace", "/workspace", "workspace", "sandbox"]


async def test_command_has_no_capabilities(backend, bare, lines):
    result = await run(backend, bare, "grep -E '^Cap(Eff|Prm|Bnd|Amb):' /proc/self/status", lines)

    assert result.exit_code == 0
    assert len(lines.lines) == 4
    assert all(line.split()[1] == "0000000000000000" for line in lines.lines)


# 2. The workspace's files persist on the host; nothing of another workspace or the host's tree is there.


async def test_files_written_in_workspace_persist_between_commands_and_appear_on_the_host(backend, bare, lines):
    first = await run(backend, bare, "echo kept > notes.txt && mkdir -p src && echo 'print(1)' > src/app.py")
    host_write(Path(bare.directory, "from-host.txt"), "written on the host\n")
    second = await run(backend, bare, "cat /workspace/notes.txt src/app.py from-host.txt", lines)

    assert first.exit_code == 0
    assert second.exit_code == 0
    assert lines.lines == ["kept", "print(1)", "written on the host"]
    assert host_read(Path(bare.directory, "notes.txt")) == "kept\n"
    assert host_read(Path(bare.directory, "src", "app.py")) == "print(1)\n"


async def test_another_workspace_and_the_host_tree_are_not_visible(backend, bare, lines):
    other = prepared(backend, organization_id=2)
    host_write(Path(other.directory, "secret.txt"), "the other tenant's data\n")

    result = await run(
        backend,
        bare,
        f"ls -A /; echo ---; test -e {other.directory} && echo other-visible; "
        f"cat {other.directory}/secret.txt; echo ---; ls -A /workspace; echo end",
        lines,
    )

    separator = lines.lines.index("---")
    root_entries = set(lines.lines[:separator])
    assert root_entries <= SANDBOX_ROOT_ENTRIES, f"unexpected host paths in /: {root_entries - SANDBOX_ROOT_ENTRIES}"
    assert not root_entries & {"root", "home", "work", "var", "run", "srv", "opt", "mnt", "media", "boot", "data"}
    assert "other-visible" not in lines.lines
    assert "the other tenant's data" not in result.output
    assert "No such file or directory" in result.output
    assert lines.lines[-2:] == ["---", "end"]  # its own /workspace is still empty


# 3. No network: not the host's loopback services, not anything beyond.


async def test_host_tcp_server_on_loopback_cannot_be_reached(backend, bare, lines):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(5)
        server.setblocking(False)
        port = server.getsockname()[1]
        probe = (
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=3).sendall(b'leak')\n"
            "    print('connected')\n"
            "except OSError as exc:\n"
            "    print('refused', type(exc).__name__)\n"
        )

        result = await run(backend, bare, f'python3 -c "{probe}"', lines)

        with pytest.raises(BlockingIOError):
            server.accept()  # nobody knocked
    assert result.exit_code == 0
    assert lines.lines == ["refused ConnectionRefusedError"]


async def test_host_abstract_unix_socket_cannot_be_reached(backend, bare, lines):
    name = f"\0airlock-probe-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(name)
        server.listen(5)
        server.setblocking(False)
        probe = (
            "import socket\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "try:\n"
            f"    s.connect({name!r})\n"
            "    print('connected')\n"
            "except OSError as exc:\n"
            "    print('refused', type(exc).__name__)\n"
        )

        result = await run(backend, bare, f'python3 -c "{probe}"', lines)

        with pytest.raises(BlockingIOError):
            server.accept()
    assert result.exit_code == 0
    assert lines.lines == ["refused ConnectionRefusedError"]


async def test_only_a_private_loopback_exists_so_outside_addresses_are_unreachable(backend, bare, lines):
    probe = (
        "import socket\n"
        "try:\n"
        "    socket.create_connection(('192.0.2.1', 80), timeout=3)\n"
        "    print('connected')\n"
        "except OSError as exc:\n"
        "    print('failed', exc.strerror)\n"
    )

    result = await run(backend, bare, f'cat /proc/net/dev; python3 -c "{probe}"', lines)

    assert result.exit_code == 0
    interfaces = {line.split(":")[0].strip() for line in lines.lines if ":" in line and "|" not in line}
    assert interfaces == {"lo"}
    assert lines.lines[-1] == "failed Network is unreachable"


# 4. The host's file system: the system read-only, the rest absent; /etc and /tmp are the sandbox's own.


async def test_system_directories_are_read_only(backend, bare, lines):
    probe = f"airlock-probe-{secrets.token_hex(6)}"

    result = await run(
        backend, bare, f"touch /usr/{probe} /usr/bin/{probe} /etc/passwd; echo evil >> /etc/passwd", lines
    )

    assert result.exit_code != 0
    assert "Read-only file system" in result.output
    assert not host_exists(Path("/usr", probe))
    assert not host_exists(Path("/usr/bin", probe))


async def test_project_files_cannot_be_read(backend, bare, lines):
    result = await run(backend, bare, f"cat {THIS_FILE}; cat {SETTINGS_FILE}; ls {THIS_FILE.parents[2]}", lines)

    assert result.exit_code != 0
    assert "SANDBOX_ROOT_ENTRIES" not in result.output
    assert "WORKSPACES_ROOT" not in result.output
    assert all("No such file or directory" in line for line in lines.lines)
    assert len(lines.lines) == 3


async def test_etc_passwd_names_only_the_sandbox_user(backend, bare, lines):
    result = await run(backend, bare, "cat /etc/passwd; echo ---; ls -A /etc; id -un 0 2>&1 || echo no-root", lines)

    separator = lines.lines.index("---")
    assert result.exit_code == 0
    assert lines.lines[:separator] == PASSWD.splitlines()
    assert host_read(Path("/etc/passwd")).startswith("root:")  # the host's file does name root
    assert "root:x:0:0" not in result.output
    assert not {"shadow", "hosts", "resolv.conf", "ssh", "environment"} & set(lines.lines[separator + 1 :])
    assert lines.lines[-1] == "no-root"


async def test_tmp_is_private_to_each_command(backend, bare, lines, tmp_path):
    host_file = Path("/tmp") / f"airlock-probe-{secrets.token_hex(6)}"  # the host's /tmp
    inside_file = Path("/tmp") / f"airlock-inside-{secrets.token_hex(6)}"
    host_write(host_file, "host secret\n")
    try:
        result = await run(
            backend, bare, f"cat {host_file}; test -e {tmp_path} && echo test-dir-visible; ls -A /tmp", lines
        )
        writer = await run(backend, bare, f"echo inside > {inside_file} && cat {inside_file}")
        reader = await run(backend, bare, "ls -A /tmp; echo end")
        leaked_to_host = host_exists(inside_file)
    finally:
        host_file.unlink()
        inside_file.unlink(missing_ok=True)

    assert "host secret" not in result.output
    assert "No such file or directory" in lines.lines[0]
    assert lines.lines[1:] == []  # neither the test's tmp directory nor anything else in /tmp
    assert writer.exit_code == 0
    assert writer.output == "inside\n"
    assert not leaked_to_host
    assert reader.output == "end\n"  # the next command's /tmp starts empty again


async def test_tmp_holds_at_most_its_size(backend, bare, lines):
    megabytes = TMP_SIZE_BYTES // (1024 * 1024) + 16

    result = await run(backend, bare, f"head -c {megabytes}M /dev/zero > /tmp/big && echo filled", lines)

    assert result.exit_code != 0
    assert "No space left on device" in result.output
    assert "filled" not in lines.lines


async def test_no_memory_file_system_holds_more_than_the_tmp_size(backend, lines):
    limited = prepared(backend, memory_limit_mb=128)
    megabytes = TMP_SIZE_BYTES // (1024 * 1024) + 16

    result = await run(
        backend,
        limited,
        f"head -c {megabytes}M /dev/zero > /dev/shm/big && echo shm-filled; "
        f"head -c {megabytes}M /dev/zero > /big && echo root-filled; "
        f"head -c {megabytes}M /dev/zero > /dev/big && echo dev-filled; "
        f"head -c {megabytes}M /dev/zero > /etc/big && echo etc-filled",
        lines,
    )

    for filled in ("shm-filled", "root-filled", "dev-filled", "etc-filled"):
        assert filled not in lines.lines, result.output
    assert "Read-only file system" in result.output


async def test_host_processes_are_invisible(backend, bare, lines):
    host_pid = os.getpid()

    result = await run(backend, bare, f"ls /proc | grep -E '^[0-9]+$'; kill -0 {host_pid} && echo can-signal", lines)

    sandbox_pids = {int(line) for line in lines.lines if line.isdigit()}
    assert "can-signal" not in lines.lines
    assert max(sandbox_pids) < 100  # a fresh PID namespace: bwrap's init, the shell, ls and grep
    assert result.exit_code != 0


# 5. The server's environment stays outside.


async def test_server_environment_does_not_leak_into_the_sandbox(backend, bare, lines, monkeypatch):
    monkeypatch.setenv("AIRLOCK_SECRET_PROBE", "canary-secret-probe")
    monkeypatch.setenv("AIRLOCK_ENCRYPTION_KEYS", "canary-encryption-key")
    monkeypatch.setenv("DATABASE_URL", "postgres://canary@127.0.0.1/airlock")

    result = await run(backend, bare, "env; echo ---; cat /proc/[0-9]*/environ | tr '\\0' '\\n'", lines)

    assert result.exit_code == 0
    assert "canary" not in result.output
    assert "AIRLOCK_SECRET_PROBE" not in result.output
    variables = dict(line.split("=", 1) for line in lines.lines[: lines.lines.index("---")])
    assert set(variables) <= {"PATH", "HOME", "LANG", "TERM", "PWD", "OLDPWD", "SHLVL", "_"}
    assert variables["HOME"] == "/workspace"
    assert variables["TERM"] == "dumb"


# 6. The timeout ends the command and everything it started, whatever session it moved to.


async def test_command_past_the_timeout_is_killed_with_everything_it_started(backend, bare, lines, sleep_marker):
    started = time.monotonic()
    result = await run(
        backend,
        bare,
        f"sleep {sleep_marker} & setsid sleep {sleep_marker} & "
        f"(setsid sh -c 'sleep {sleep_marker} & sleep {sleep_marker}' &) ; "
        "echo started; sleep 30; echo never",
        lines,
        limit=1,
    )
    elapsed = time.monotonic() - started

    assert result.timed_out
    assert not result.succeeded
    assert elapsed < 8
    assert lines.lines == ["started"]
    assert gone_within(sleep_marker) == set(), "background processes outlived the timeout"


async def test_background_processes_stop_when_the_command_ends(backend, bare, lines, sleep_marker):
    started = time.monotonic()
    result = await run(
        backend, bare, f"setsid sleep {sleep_marker} & nohup sleep {sleep_marker} >/dev/null 2>&1 & echo done", lines
    )

    assert result.exit_code == 0
    assert not result.timed_out
    assert time.monotonic() - started < 8  # waited neither for the sleeps nor for the timeout
    assert lines.lines == ["done"]
    assert gone_within(sleep_marker) == set(), "background processes outlived the command"


# 7. The workspace's memory limit.


async def test_memory_limit_stops_a_large_allocation(backend, lines):
    limited = prepared(backend, memory_limit_mb=128)

    result = await run(backend, limited, 'python3 -c "b = bytearray(512 * 1024 * 1024); print(len(b))"', lines)

    assert result.exit_code != 0
    assert "MemoryError" in result.output
    assert str(512 * 1024 * 1024) not in lines.lines


async def test_memory_limit_cannot_be_raised_from_inside(backend, lines):
    limited = prepared(backend, memory_limit_mb=128)
    probe = (
        "import resource\n"
        "print(resource.getrlimit(resource.RLIMIT_AS))\n"
        "try:\n"
        "    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n"
        "    print('raised')\n"
        "except (ValueError, OSError):\n"
        "    print('refused')\n"
    )

    result = await run(backend, limited, f'python3 -c "{probe}"', lines)

    limit = 128 * 1024 * 1024
    assert result.exit_code == 0
    assert lines.lines == [f"({limit}, {limit})", "refused"]


async def test_without_a_limit_a_moderate_allocation_works(backend, bare, lines):
    result = await run(backend, bare, 'python3 -c "b = bytearray(64 * 1024 * 1024); print(len(b))"', lines)

    assert result.exit_code == 0
    assert lines.lines == [str(64 * 1024 * 1024)]


# 8. A host without bubblewrap: refused at once, with what to install.


@pytest.fixture
def without_bwrap(monkeypatch) -> None:
    """bwrap is not installed (the real lookup is cached, so the module's function is replaced)."""
    monkeypatch.setattr(bubblewrap, "_bwrap_path", lambda: None)


def test_prepare_without_bwrap_says_to_install_bubblewrap(without_bwrap):
    backend = get_backend("bubblewrap")
    workspace = unsaved_workspace()
    workspace.directory = backend.directory_for(workspace)

    with pytest.raises(ExecutionError, match=INSTALL_HINT) as raised:
        backend.prepare(workspace)

    assert isinstance(raised.value, SandboxUnavailable)
    assert "apt-get install bubblewrap" in str(raised.value)
    assert not Path(workspace.directory).exists()


async def test_run_without_bwrap_says_to_install_bubblewrap(monkeypatch, lines):
    backend = get_backend("bubblewrap")
    workspace = unsaved_workspace()
    workspace.directory = backend.directory_for(workspace)
    os.makedirs(workspace.directory)  # prepared earlier, on a host that had bwrap
    monkeypatch.setattr(bubblewrap, "_bwrap_path", lambda: None)

    with pytest.raises(SandboxUnavailable, match=INSTALL_HINT):
        await run(backend, workspace, "echo should-not-run > ran.txt", lines)

    assert lines.lines == []
    assert not host_exists(Path(workspace.directory, "ran.txt"))


def test_sandbox_problem_names_the_package_when_bwrap_is_missing(without_bwrap):
    problem = bubblewrap.sandbox_problem()

    assert problem is not None
    assert INSTALL_HINT in problem
    assert "apt-get install bubblewrap" in problem


def test_sandbox_problem_explains_a_bwrap_that_cannot_start_a_sandbox(monkeypatch):
    monkeypatch.setattr(bubblewrap, "_bwrap_path", lambda: "/bin/false")

    problem = bubblewrap.sandbox_problem()

    assert problem is not None
    assert "could not start a sandbox" in problem
    assert "unprivileged user namespaces" in problem


def test_sandbox_problem_is_none_where_bwrap_works(backend):
    assert bubblewrap.sandbox_problem() is None


@pytest.mark.skipif(os.geteuid() != 0, reason="what a root-started Airlock does: this run is not root")
async def test_started_by_root_the_sandbox_is_an_unprivileged_host_user_not_root(backend, bare, lines, settings):
    result = await run(
        backend,
        bare,
        "echo made > owned; [ -w /proc/sys/vm/drop_caches ] && echo sysctl-writable; "
        "[ -w /proc/sys/kernel/core_pattern ] && echo core-pattern-writable; echo checked",
        lines,
    )

    assert result.exit_code == 0 and lines.lines == ["checked"]  # neither kernel setting is writable
    owner = (Path(bare.directory) / "owned").stat().st_uid
    assert owner == settings.SANDBOX_UID_BASE + bare.organization_id


async def test_a_command_cannot_make_a_user_namespace_of_its_own(backend, bare, lines):
    result = await run(backend, bare, "unshare -Urm sh -c 'mount -t tmpfs none /tmp && echo mounted'", lines)

    assert result.exit_code != 0 and "mounted" not in lines.lines


def test_an_installation_under_a_bound_system_path_is_refused(backend, settings):
    settings.WORKSPACES_ROOT = Path("/usr/local/airlock-test/workspaces")
    workspace = unsaved_workspace()
    workspace.directory = backend.directory_for(workspace)

    assert "lies under /usr, which every sandbox sees" in bubblewrap.sandbox_problem()
    with pytest.raises(SandboxUnavailable, match="Move it out of /usr"):
        backend.prepare(workspace)
    assert not Path("/usr/local/airlock-test").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox runs as another host user only when Airlock is root")
def test_a_workspaces_root_the_sandbox_user_cannot_reach_is_named(backend, settings, tmp_path):
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    settings.WORKSPACES_ROOT = closed / "workspaces"

    problem = bubblewrap.sandbox_problem()

    assert f"{closed} lets only its owner in" in problem and "away from Airlock's data" in problem


def test_folders_above_the_root_that_do_not_exist_yet_are_no_problem(backend, settings, tmp_path):
    settings.WORKSPACES_ROOT = let_sandbox_reach(tmp_path / "later") / "not" / "yet" / "workspaces"

    assert bubblewrap.sandbox_problem() is None
    assert prepared(backend).directory.startswith(str(tmp_path / "later" / "not" / "yet"))


KEYRING_PROBE = """
import ctypes, platform
libc = ctypes.CDLL(None, use_errno=True)
numbers = {"x86_64": (248, 250), "aarch64": (217, 219)}[platform.machine()]
add_key, keyctl = numbers
key = libc.syscall(add_key, b"user", b"airlock-probe", b"secret", 6, -3)  # into the session keyring
print("add_key", key, ctypes.get_errno())
found = libc.syscall(keyctl, 0, -3, 0)  # KEYCTL_GET_KEYRING_ID of the session keyring
print("keyctl", found, ctypes.get_errno())
"""


async def test_kernel_keyrings_are_out_of_reach(backend, bare, lines):
    result = await run(backend, bare, f"python3 -c '{KEYRING_PROBE}'", lines)

    assert result.exit_code == 0, result.output
    assert lines.lines == ["add_key -1 1", "keyctl -1 1"]  # both refused with EPERM by the seccomp filter


async def test_dev_stdout_and_dev_stderr_can_be_written(backend, bare, lines):
    result = await run(
        backend, bare, "echo out > /dev/stdout; echo err > /dev/stderr; echo piped | tee /dev/stderr", lines
    )

    assert result.exit_code == 0, result.output
    assert lines.lines == ["out", "err", "piped", "piped"]


@pytest.mark.skipif(os.geteuid() != 0, reason="per-organization host users exist only when Airlock is root")
async def test_each_organization_runs_as_its_own_host_user_behind_a_folder_only_it_may_pass(backend, lines, settings):
    first, second = prepared(backend, organization_id=1), prepared(backend, organization_id=2)

    for workspace in (first, second):
        await run(backend, workspace, "echo mine > owned", lines)

    owners = [(Path(w.directory) / "owned").stat().st_uid for w in (first, second)]
    assert owners == [settings.SANDBOX_UID_BASE + 1, settings.SANDBOX_UID_BASE + 2]
    folder = Path(first.directory).parent.stat()
    assert (folder.st_uid, folder.st_gid, folder.st_mode & 0o7777) == (0, settings.SANDBOX_UID_BASE + 1, 0o710)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another host user")
async def test_a_setuid_program_planted_in_a_workspace_is_out_of_reach_of_other_host_users(backend, bare, lines):
    await run(backend, bare, "cp /usr/bin/cat c && chmod 4755 c && echo secret > s && chmod 0711 /workspace", lines)
    planted = Path(bare.directory) / "c"
    assert planted.stat().st_mode & 0o4000  # the sandbox could set it; mounted nosuid only inside

    outsider = subprocess.run(  # noqa: ASYNC221 - a one-off check from outside the sandbox
        [
            "setpriv",
            "--reuid=12345",
            "--regid=12345",
            "--clear-groups",
            "--",
            str(planted),
            str(Path(bare.directory) / "s"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )

    planted.unlink()  # no setuid file is left behind in pytest's folders
    assert outsider.returncode != 0 and "secret" not in outsider.stdout
    assert "Permission denied" in outsider.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="per-organization host users exist only when Airlock is root")
def test_an_organization_id_past_the_last_host_uid_is_refused_not_wrapped(backend, settings):
    settings.SANDBOX_UID_BASE = 2**32 - 10
    workspace = unsaved_workspace(organization_id=9)  # base + 9 = 2**32 - 1: chown's "leave unchanged"
    workspace.directory = backend.directory_for(workspace)

    with pytest.raises(SandboxUnavailable, match="lower the base"):
        backend.prepare(workspace)


FORK_PROBE = """
import os, time
children = 0
try:
    while children < 200:
        if os.fork() == 0:
            time.sleep(3)
            os._exit(0)
        children += 1
except OSError as error:
    print("refused", error.errno)
print("children", children)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="per-organization host users exist only when Airlock is root")
async def test_an_organizations_sandboxes_share_one_process_cap(backend, lines, settings):
    settings.SANDBOX_MAX_PROCESSES = 40
    alone = prepared(backend, organization_id=77)  # a host user no other test's processes count against

    result = await run(backend, alone, f"python3 -c '{FORK_PROBE}'", lines)

    assert result.exit_code == 0, result.output
    assert lines.lines[0] == "refused 11"  # EAGAIN
    children = int(lines.lines[1].split()[1])
    assert 10 < children < 40


@pytest.mark.skipif(os.geteuid() != 0, reason="per-organization host users exist only when Airlock is root")
def test_a_host_uid_an_account_already_has_is_refused(backend, settings):
    settings.SANDBOX_UID_BASE = 65534 - 3  # organization 3 would be `nobody`
    workspace = unsaved_workspace(organization_id=3)
    workspace.directory = backend.directory_for(workspace)

    with pytest.raises(SandboxUnavailable, match="belongs to 'nobody'"):
        backend.prepare(workspace)
    assert not Path(workspace.directory).exists()


def test_without_libseccomp_the_checks_say_what_to_install(backend, monkeypatch):
    def missing() -> bytes:
        raise OSError("libseccomp.so.2: cannot open shared object file")

    monkeypatch.setattr(bubblewrap, "_seccomp_filter", missing)
    workspace = unsaved_workspace()
    workspace.directory = backend.directory_for(workspace)

    assert "install Debian's `libseccomp2` package" in bubblewrap.sandbox_problem()
    with pytest.raises(SandboxUnavailable, match="libseccomp2"):
        backend.prepare(workspace)
