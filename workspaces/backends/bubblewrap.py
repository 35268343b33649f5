"""Bubblewrap execution backend: each command runs in a fresh sandbox around the workspace's directory.

What a command inside sees and may do:

- its workspace directory, read-write, at /workspace (its working directory and HOME), and nothing else
  of the host's file system but the operating system's programs and libraries (/usr, read-only), a
  minimal /etc (read-only: passwd and group naming the sandbox user, the dynamic linker's cache and
  the alternatives links), a private /tmp (a memory file system of at most `TMP_SIZE_BYTES`), /proc
  and a minimal /dev with a private /dev/shm (at most `SHM_SIZE_BYTES`); the rest of / and /dev is
  read-only, so memory file systems are the only writable places besides /workspace and each has a size.
  The server's files, its configuration, other workspaces and the database's
  socket are not there;
- no network: the sandbox has its own network namespace with only its own loopback, so neither the
  host's services on 127.0.0.1 nor anything beyond can be reached;
- its own user (uid and gid 1000, no capabilities), PID, IPC, UTS and cgroup namespaces: it cannot
  see or signal the host's processes, and its host name is `workspace`; it cannot create further user
  namespaces (`--disable-userns`), so it cannot mount file systems of its own;
- on the host, an unprivileged user of its organization's own: when Airlock runs as root, bubblewrap is
  started (`setpriv`) as uid and gid `SANDBOX_UID_BASE` + the organization's id, because a sandbox whose
  host uid is 0 is root to the kernel wherever it checks the uid rather than capabilities (e.g. writing
  /proc/sys), and one uid per tenant keeps tenants' files, keyrings and per-user limits apart. The
  workspace directory belongs to that user, the organization's folder is root's with that group (0710),
  the workspaces root is traverse-only (0711);
- a seccomp filter refusing the kernel keyrings and other kernel surface no command needs (DENIED_SYSCALLS);
- the same scrubbed environment and the same output accounting as the local backend, and, when the
  workspace has one, the memory limit: an address-space limit on each process (not on their sum), set
  before the sandbox starts.

Refused (`sandbox_problem`): an installation, data folder or workspaces root under a path the sandbox
binds (/usr, the /etc files above): every sandbox would see every workspace and the database there.

Every process a command starts lives in the sandbox's PID namespace, which ends with the command:
bubblewrap's `--die-with-parent` kills it when the command's process group is stopped at the
timeout, so nothing escapes by starting its own session. When Airlock is root, an organization's
sandboxes share one process cap (`SANDBOX_MAX_PROCESSES`, RLIMIT_NPROC of its host user); there is no CPU
limit, and /workspace is bounded only by the disk (a cgroup and a quota per workspace belong to a
container backend).

Needs Debian's `bubblewrap` package and unprivileged user namespaces (the kernel's default on Debian).
"""

from __future__ import annotations

import errno
import functools
import grp
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings

from workspaces.backends.base import ExecutionError
from workspaces.backends.local import PRLIMIT, LocalBackend, memory_limit_prefix

if TYPE_CHECKING:
    from workspaces.models import Workspace

BWRAP = "bwrap"
SETPRIV = "/usr/bin/setpriv"  # util-linux, on every Debian system
SANDBOX_HOME = "/workspace"
SANDBOX_UID = 1000
# (uid_t)-1 means "leave unchanged" to chown and (uid_t)-2 is NFS's nobody: a sandbox's host uid stays below both.
HIGHEST_HOST_UID = 2**32 - 3
TMP_SIZE_BYTES = 256 * 1024 * 1024
SHM_SIZE_BYTES = 64 * 1024 * 1024
# Host paths bound read-only when they exist: what programs need to start and to find their alternatives.
READ_ONLY_ETC = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/localtime")
PASSWD = f"sandbox:x:{SANDBOX_UID}:{SANDBOX_UID}:Airlock workspace:{SANDBOX_HOME}:/bin/sh\n"
GROUP = f"sandbox:x:{SANDBOX_UID}:\n"
CHECK_TIMEOUT_SECONDS = 10
# Refused inside the sandbox (EPERM), as container runtimes' default profiles refuse them: kernel keyrings (shared
# per host user and with the server's session keyring), and kernel attack surface no command needs.
DENIED_SYSCALLS = (
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
)


class SandboxUnavailable(ExecutionError):
    """Bubblewrap is missing or cannot create its namespaces on this host."""


@functools.cache
def _bwrap_path() -> str | None:
    return shutil.which(BWRAP)


def host_uid(organization_id: int) -> int | None:
    """The unprivileged host user (and group) the organization's sandboxes run as when Airlock runs as root:
    `SANDBOX_UID_BASE` + the organization's id, so that no two tenants share a uid (nor its keyrings, per-user
    kernel limits or files); None when Airlock is not root (bubblewrap then runs as Airlock's own user)."""
    if os.geteuid() != 0:
        return None
    uid = settings.SANDBOX_UID_BASE + organization_id
    if uid > HIGHEST_HOST_UID:
        raise SandboxUnavailable(
            f"Organization {organization_id} has no host user left above AIRLOCK_SANDBOX_UID_BASE "
            f"({settings.SANDBOX_UID_BASE}): lower the base so that base + organization id stays at most "
            f"{HIGHEST_HOST_UID}."
        )
    return uid


def _as_host_user(organization_id: int) -> list[str]:
    """setpriv to the organization's host user, under its process cap (counted over all its sandboxes)."""
    uid = host_uid(organization_id)
    if uid is None:
        return []
    return [
        PRLIMIT,
        f"--nproc={settings.SANDBOX_MAX_PROCESSES}",
        "--",
        SETPRIV,
        f"--reuid={uid}",
        f"--regid={uid}",
        "--clear-groups",
        "--",
    ]


def account_problem(organization_id: int) -> str | None:
    """Why the organization's host uid or gid is unsafe to use: an account or group already has it."""
    uid = host_uid(organization_id)
    if uid is None:
        return None
    for kind, lookup in (("user", pwd.getpwuid), ("group", grp.getgrgid)):
        try:
            entry = lookup(uid)
        except KeyError:
            continue
        return (
            f"Host {kind} id {uid} (AIRLOCK_SANDBOX_UID_BASE + organization {organization_id}) belongs to "
            f"{entry[0]!r}, which would reach this organization's workspaces: choose a base whose range no account "
            "uses."
        )
    return None


def _traversable(folder: Path) -> None:
    """Let every sandbox user pass through (not list) the workspaces root, when Airlock is root."""
    mode = folder.stat().st_mode if os.geteuid() == 0 else 0o711
    if mode & 0o711 != 0o711:
        folder.chmod(mode & 0o7777 | 0o711)


def _organization_folder(folder: Path, organization_id: int) -> None:
    """An organization's folder: root's, passable only by that organization's sandbox group (0710)."""
    uid = host_uid(organization_id)
    if uid is None:
        return
    status = folder.stat()
    if status.st_uid != 0 or status.st_gid != uid:
        os.chown(folder, 0, uid)
    if status.st_mode & 0o7777 != 0o710:
        folder.chmod(0o710)


@functools.cache
def _seccomp_filter() -> bytes:
    """The compiled seccomp program: the syscalls in DENIED_SYSCALLS fail with EPERM, everything else is allowed."""
    import pyseccomp as seccomp

    rules = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in DENIED_SYSCALLS:
        rules.add_rule(seccomp.ERRNO(errno.EPERM), name)
    with tempfile.TemporaryFile() as compiled:
        rules.export_bpf(compiled)
        compiled.seek(0)
        return compiled.read()


def _compiled_filter() -> bytes:
    """The compiled seccomp program, or SandboxUnavailable saying what to install."""
    try:
        return _seccomp_filter()
    except (ImportError, OSError, RuntimeError, ValueError) as exc:
        raise SandboxUnavailable(
            f"The sandbox's seccomp filter could not be compiled ({exc}): install Debian's `libseccomp2` package."
        ) from exc


def _seccomp_fd() -> int:
    """A file descriptor holding the compiled filter, for `bwrap --seccomp` (the caller closes it)."""
    program = _compiled_filter()
    fd = os.memfd_create("airlock-seccomp", os.MFD_CLOEXEC)
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _etc_files() -> Path:
    """A read-only passwd and group naming the sandbox user, written once per workspaces root and process (again if
    someone removed them)."""
    folder = _etc_files_in(str(Path(settings.WORKSPACES_ROOT).absolute()))
    if not (folder / "group").exists():
        _etc_files_in.cache_clear()
        folder = _etc_files_in(str(Path(settings.WORKSPACES_ROOT).absolute()))
    return folder


@functools.cache
def _etc_files_in(root_path: str) -> Path:
    root = Path(root_path)
    folder = root / ".sandbox-etc"
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    _traversable(root)
    for name, text in (("passwd", PASSWD), ("group", GROUP)):
        path = folder / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            path.chmod(0o644)
    return folder


@functools.cache
def _system_mounts() -> tuple[str, ...]:
    """/usr read-only, with the merged-/usr links a Debian system has at its root."""
    arguments = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = Path("/") / name
        if host.is_symlink():
            arguments += ["--symlink", os.readlink(host), f"/{name}"]
        elif host.is_dir():
            arguments += ["--ro-bind", str(host), f"/{name}"]
    return tuple(arguments)


def sandbox_arguments(directory: str, *, seccomp_fd: int) -> list[str]:
    """bubblewrap's arguments for a sandbox around `directory` (see the module docstring)."""
    etc = _etc_files()
    arguments = [
        "--seccomp",
        str(seccomp_fd),
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        *_system_mounts(),
        "--dir",
        "/etc",
        "--ro-bind",
        str(etc / "passwd"),
        "/etc/passwd",
        "--ro-bind",
        str(etc / "group"),
        "/etc/group",
    ]
    for path in READ_ONLY_ETC:
        if os.path.exists(path):
            arguments += ["--ro-bind", path, path]
    arguments += [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        str(SHM_SIZE_BYTES),
        "--tmpfs",
        "/dev/shm",  # noqa: S108 - the sandbox's own, sized memory file system
        "--size",
        str(TMP_SIZE_BYTES),
        "--tmpfs",
        "/tmp",  # noqa: S108 - the sandbox's own memory file system, not the host's /tmp
        "--bind",
        directory,
        SANDBOX_HOME,
        "--chdir",
        SANDBOX_HOME,
        "--uid",
        str(SANDBOX_UID),
        "--gid",
        str(SANDBOX_UID),
        "--hostname",
        "workspace",
        # The sandbox's own / and /dev are memory file systems without a size: read-only, nothing can fill them.
        "--remount-ro",
        "/dev",
        "--remount-ro",
        "/",
    ]
    return arguments


def exposure_problem() -> str | None:
    """Why every sandbox would see Airlock's own files (they lie under a path it binds); None when they do not."""
    bound = [Path("/usr"), *(Path(path) for path in READ_ONLY_ETC)]
    for what, path in (
        ("AIRLOCK_WORKSPACES_ROOT", settings.WORKSPACES_ROOT),
        ("AIRLOCK_DATA_DIR", settings.DATA_DIR),
        ("Airlock's installation", settings.BASE_DIR),
    ):
        resolved = Path(path).resolve()
        for system in bound:
            if resolved.is_relative_to(system):
                return (
                    f"{what} ({resolved}) lies under {system}, which every sandbox sees read-only: every workspace "
                    f"could read the others and the database there. Move it out of {system}."
                )
    return None


def reach_problem() -> str | None:
    """Why the sandboxes' host users could not reach the workspaces root (a folder above it shuts others out)."""
    if os.geteuid() != 0:
        return None
    root = Path(settings.WORKSPACES_ROOT).absolute()
    for folder in root.parents:
        if folder.exists() and not folder.stat().st_mode & 0o001:
            return (
                f"The sandboxes' host users (uid AIRLOCK_SANDBOX_UID_BASE + organization id) cannot reach "
                f"AIRLOCK_WORKSPACES_ROOT ({root}): {folder} lets only its owner in. Put the workspaces root in a "
                "folder whose parents let others pass through, away from Airlock's data (e.g. /var/lib/airlock-"
                f"workspaces), or let others pass through {folder} (chmod o+x) if nothing readable lies there."
            )
    return None


def sandbox_problem() -> str | None:
    """Why a sandbox cannot start on this host, in words an operator can act on; None when one can."""
    path = _bwrap_path()
    if path is None:
        return (
            "bubblewrap is not installed on this host: install Debian's `bubblewrap` package "
            "(apt-get install bubblewrap)."
        )
    unsafe = exposure_problem() or reach_problem()
    if unsafe:
        return unsafe
    try:
        probe = _etc_files()  # any folder every sandbox user may read serves as the probe's /workspace
        try:
            seccomp_fd = _seccomp_fd()
        except SandboxUnavailable as exc:
            return str(exc)
        try:
            completed = subprocess.run(
                [
                    *_as_host_user(0),
                    path,
                    *sandbox_arguments(str(probe), seccomp_fd=seccomp_fd),
                    "/bin/sh",
                    "-c",
                    "true",
                ],
                env={"PATH": "/usr/bin:/bin"},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=CHECK_TIMEOUT_SECONDS,
                check=False,
                pass_fds=(seccomp_fd,),
            )
        finally:
            os.close(seccomp_fd)
    except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap could not start a sandbox: {exc}."
    if completed.returncode != 0:
        reason = completed.stderr.decode("utf-8", "replace").strip() or f"exit status {completed.returncode}"
        return (
            f"bubblewrap could not start a sandbox ({reason}): the kernel must allow unprivileged user namespaces "
            "(sysctl kernel.unprivileged_userns_clone=1; in a container, allow them in its seccomp profile)."
        )
    return None


class BubblewrapBackend(LocalBackend):
    """Runs each command in a bubblewrap sandbox: no network, read-only system, the workspace at /workspace."""

    name = "bubblewrap"

    def prepare(self, workspace: Workspace) -> None:
        """Refuse at once where no safe sandbox can start; create the directory, owned by the sandbox's host user."""
        self._refuse_unsafe()
        taken = account_problem(workspace.organization_id)
        if taken:
            raise SandboxUnavailable(taken)
        super().prepare(workspace)
        self._hand_over(Path(workspace.directory or self.directory_for(workspace)), workspace.organization_id)

    @staticmethod
    def _refuse_unsafe() -> None:
        if _bwrap_path() is None:
            raise SandboxUnavailable(sandbox_problem() or "bubblewrap is not installed on this host.")
        unsafe = exposure_problem() or reach_problem()
        if unsafe:
            raise SandboxUnavailable(unsafe)
        _compiled_filter()  # compiles once, or the refusal says what to install

    @staticmethod
    def _hand_over(directory: Path, organization_id: int) -> None:
        """When Airlock is root: the directory belongs to the organization's sandbox user; the organization's folder
        lets only that user's group pass, the workspaces root lets every sandbox user pass."""
        uid = host_uid(organization_id)
        if uid is None:
            return
        _traversable(directory.parent.parent)
        _organization_folder(directory.parent, organization_id)
        status = directory.stat()
        if status.st_uid != uid or status.st_gid != uid:
            os.chown(directory, uid, uid)

    def environment(self, directory: str) -> dict[str, str]:
        """The local backend's scrubbed environment, with HOME at the sandbox's /workspace."""
        return {**super().environment(directory), "HOME": SANDBOX_HOME}

    def launch(self, workspace: Workspace, directory: str, command: str, output_fd: int) -> tuple[list[str], list[int]]:
        """prlimit (for a memory limit), setpriv (when Airlock is root), bwrap with the seccomp filter around the
        workspace, the shell. The output pipe goes to the sandbox's host user, so `/dev/stdout` opens inside."""
        self._refuse_unsafe()
        self._hand_over(Path(directory), workspace.organization_id)
        uid = host_uid(workspace.organization_id)
        if uid is not None:
            os.fchown(output_fd, uid, uid)
        seccomp_fd = _seccomp_fd()
        argv = [
            *memory_limit_prefix(workspace),
            *_as_host_user(workspace.organization_id),
            str(_bwrap_path()),
            *sandbox_arguments(directory, seccomp_fd=seccomp_fd),
            "/bin/sh",
            "-c",
            command,
        ]
        return argv, [seccomp_fd]
