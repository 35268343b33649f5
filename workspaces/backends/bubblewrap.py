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
  see or signal the host's processes, and its host name is `workspace`;
- the same scrubbed environment and the same output accounting as the local backend, and, when the
  workspace has one, the memory limit (an address-space limit set before the sandbox starts).

Every process a command starts lives in the sandbox's PID namespace, which ends with the command:
bubblewrap's `--die-with-parent` kills it when the command's process group is stopped at the
timeout, so nothing escapes by starting its own session. A fork bomb is bounded only by the timeout
(bubblewrap sets no process or CPU limits; a cgroup per workspace belongs to a container backend).

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


def _etc_files() -> Path:
    """A read-only passwd and group naming the sandbox user, written once under the workspaces root."""
    folder = Path(settings.WORKSPACES_ROOT).absolute() / ".sandbox-etc"
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
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


def sandbox_problem() -> str | None:
    """Why a sandbox cannot start on this host, in words an operator can act on; None when one can."""
    path = _bwrap_path()
    if path is None:
        return (
            "bubblewrap is not installed on this host: install Debian's `bubblewrap` package "
            "(apt-get install bubblewrap)."
        )
    root = Path(settings.WORKSPACES_ROOT).absolute()
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        completed = subprocess.run(
            [path, *sandbox_arguments(str(root)), "/bin/sh", "-c", "true"],
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
        """Refuse at once on a host without bubblewrap; then create the directory as the local backend does."""
        if _bwrap_path() is None:
            raise SandboxUnavailable(sandbox_problem() or "bubblewrap is not installed on this host.")
        super().prepare(workspace)

    def environment(self, directory: str) -> dict[str, str]:
        """The local backend's scrubbed environment, with HOME at the sandbox's /workspace."""
        return {**super().environment(directory), "HOME": SANDBOX_HOME}

    def command_line(self, workspace: Workspace, directory: str, command: str) -> list[str]:
        """prlimit (for a memory limit), then bwrap around the workspace, then the shell."""
        path = _bwrap_path()
        if path is None:
            raise SandboxUnavailable(sandbox_problem() or "bubblewrap is not installed on this host.")
        return [*memory_limit_prefix(workspace), path, *sandbox_arguments(directory), "/bin/sh", "-c", command]
