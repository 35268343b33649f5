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
- on the host, an unprivileged user: when Airlock runs as root, bubblewrap is started as
  `SANDBOX_HOST_UID` (`setpriv`), because a sandbox whose host uid is 0 is root to the kernel wherever
  it checks the uid rather than capabilities (e.g. writing /proc/sys); the workspace directory then
  belongs to that user and its parent folders are traverse-only (0711) so that bubblewrap reaches it;
- the same scrubbed environment and the same output accounting as the local backend, and, when the
  workspace has one, the memory limit: an address-space limit on each process (not on their sum), set
  before the sandbox starts.

Refused (`sandbox_problem`): an installation, data folder or workspaces root under a path the sandbox
binds (/usr, the /etc files above): every sandbox would see every workspace and the database there.

Every process a command starts lives in the sandbox's PID namespace, which ends with the command:
bubblewrap's `--die-with-parent` kills it when the command's process group is stopped at the
timeout, so nothing escapes by starting its own session. A fork bomb is bounded only by the timeout,
and /workspace only by the disk (bubblewrap sets no process, CPU or disk limits; a cgroup and a quota per
workspace belong to a container backend).

Needs Debian's `bubblewrap` package and unprivileged user namespaces (the kernel's default on Debian).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings

from workspaces.backends.base import ExecutionError
from workspaces.backends.local import LocalBackend, memory_limit_prefix

if TYPE_CHECKING:
    from workspaces.models import Workspace

BWRAP = "bwrap"
SETPRIV = "/usr/bin/setpriv"  # util-linux, on every Debian system
SANDBOX_HOME = "/workspace"
SANDBOX_UID = 1000
TMP_SIZE_BYTES = 256 * 1024 * 1024
SHM_SIZE_BYTES = 64 * 1024 * 1024
# Host paths bound read-only when they exist: what programs need to start and to find their alternatives.
READ_ONLY_ETC = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/localtime")
PASSWD = f"sandbox:x:{SANDBOX_UID}:{SANDBOX_UID}:Airlock workspace:{SANDBOX_HOME}:/bin/sh\n"
GROUP = f"sandbox:x:{SANDBOX_UID}:\n"
CHECK_TIMEOUT_SECONDS = 10


class SandboxUnavailable(ExecutionError):
    """Bubblewrap is missing or cannot create its namespaces on this host."""


@functools.cache
def _bwrap_path() -> str | None:
    return shutil.which(BWRAP)


def host_uid() -> int | None:
    """The unprivileged host user bubblewrap runs as when Airlock runs as root; None when Airlock is not root."""
    return settings.SANDBOX_HOST_UID if os.geteuid() == 0 else None


def _as_host_user() -> list[str]:
    uid = host_uid()
    return [] if uid is None else [SETPRIV, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]


def _traversable(folder: Path) -> None:
    """Let the unprivileged sandbox user pass through (not list) a folder of Airlock's, when Airlock is root."""
    if host_uid() is not None and folder.stat().st_mode & 0o711 != 0o711:
        folder.chmod(folder.stat().st_mode & 0o7777 | 0o711)


def _etc_files() -> Path:
    """A read-only passwd and group naming the sandbox user, written once under the workspaces root."""
    root = Path(settings.WORKSPACES_ROOT).absolute()
    folder = root / ".sandbox-etc"
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    _traversable(root)
    for name, text in (("passwd", PASSWD), ("group", GROUP)):
        path = folder / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            path.chmod(0o644)
    return folder


def _system_mounts() -> list[str]:
    """/usr read-only, with the merged-/usr links a Debian system has at its root."""
    arguments = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = Path("/") / name
        if host.is_symlink():
            arguments += ["--symlink", os.readlink(host), f"/{name}"]
        elif host.is_dir():
            arguments += ["--ro-bind", str(host), f"/{name}"]
    return arguments


def sandbox_arguments(directory: str) -> list[str]:
    """bubblewrap's arguments for a sandbox around `directory` (see the module docstring)."""
    etc = _etc_files()
    arguments = [
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
    """Why the sandbox's host user could not reach the workspaces root (a folder above it shuts others out)."""
    uid = host_uid()
    if uid is None:
        return None
    root = Path(settings.WORKSPACES_ROOT).absolute()
    for folder in root.parents:
        mode = folder.stat().st_mode
        if not mode & 0o001:
            return (
                f"The sandbox's host user (uid {uid}, AIRLOCK_SANDBOX_UID) cannot reach AIRLOCK_WORKSPACES_ROOT "
                f"({root}): {folder} lets only its owner in. Let others pass through it (chmod o+x {folder}) "
                "or put the workspaces root elsewhere."
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
        probe = _etc_files()  # any folder the sandbox user may read serves as the probe's /workspace
        completed = subprocess.run(
            [*_as_host_user(), path, *sandbox_arguments(str(probe)), "/bin/sh", "-c", "true"],
            env={"PATH": "/usr/bin:/bin"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=CHECK_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
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
        super().prepare(workspace)
        self._hand_over(Path(workspace.directory or self.directory_for(workspace)))

    @staticmethod
    def _refuse_unsafe() -> None:
        if _bwrap_path() is None:
            raise SandboxUnavailable(sandbox_problem() or "bubblewrap is not installed on this host.")
        unsafe = exposure_problem() or reach_problem()
        if unsafe:
            raise SandboxUnavailable(unsafe)

    @staticmethod
    def _hand_over(directory: Path) -> None:
        """When Airlock is root: the directory belongs to the sandbox's host user, its parents are traversable."""
        uid = host_uid()
        if uid is None:
            return
        _traversable(directory.parent)
        _traversable(directory.parent.parent)
        if directory.stat().st_uid != uid:
            os.chown(directory, uid, uid)

    def environment(self, directory: str) -> dict[str, str]:
        """The local backend's scrubbed environment, with HOME at the sandbox's /workspace."""
        return {**super().environment(directory), "HOME": SANDBOX_HOME}

    def command_line(self, workspace: Workspace, directory: str, command: str) -> list[str]:
        """prlimit (for a memory limit), setpriv (when Airlock is root), bwrap around the workspace, the shell."""
        self._refuse_unsafe()
        self._hand_over(Path(directory))
        return [
            *memory_limit_prefix(workspace),
            *_as_host_user(),
            str(_bwrap_path()),
            *sandbox_arguments(directory),
            "/bin/sh",
            "-c",
            command,
        ]
