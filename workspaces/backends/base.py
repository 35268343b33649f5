"""The contract every execution backend keeps: prepare a workspace, run one command, report how it ended."""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.utils.module_loading import import_string

if TYPE_CHECKING:
    from workspaces.models import Workspace

# Called once per line of output (stdout and stderr merged in the order produced), without the newline.
OutputCallback = Callable[[str], Awaitable[None]]

# How much of the output the audit trail keeps verbatim at each end.
HEAD_BYTES = 4096
TAIL_BYTES = 4096
# A line longer than this (in characters) without a newline is passed on in pieces of at most this size.
LINE_PIECE_CHARS = 8192


@dataclass(frozen=True)
class ExecutionResult:
    """How one command ended and what it printed.

    `output_bytes` and `output_sha256` cover everything the command produced, even past the cap;
    `output` holds only what was captured (at most the cap). Text fields are UTF-8 decoded with
    invalid bytes and NUL characters replaced by U+FFFD; the hash is over the raw bytes.
    """

    exit_code: int | None
    timed_out: bool
    output_truncated: bool
    output_bytes: int
    output_sha256: str
    duration_ms: int
    output_head: str
    output_tail: str
    output: str

    @property
    def succeeded(self) -> bool:
        """Whether the command exited by itself with status 0."""
        return self.exit_code == 0 and not self.timed_out


class ExecutionError(Exception):
    """The backend could not run the command at all (not: the command ran and failed)."""


class ExecutionBackend(abc.ABC):
    """Where and how a workspace's commands run."""

    name: str = ""

    @abc.abstractmethod
    def directory_for(self, workspace: Workspace) -> str:
        """The working directory the workspace's commands run in, as the backend sees it."""

    @abc.abstractmethod
    def prepare(self, workspace: Workspace) -> None:
        """Make the workspace ready to run commands (idempotent)."""

    @abc.abstractmethod
    async def run(
        self,
        *,
        workspace: Workspace,
        command: str,
        timeout: float,  # noqa: ASYNC109 - the command's limit: its process group is killed, not just awaited
        output_cap: int,
        on_line: OutputCallback,
    ) -> ExecutionResult:
        """Run one shell command in the workspace, streaming its output lines to `on_line`.

        Raises ExecutionError when the command cannot be started; a command that fails, or is
        killed at the timeout, is a result, not an error.
        """


# name -> dotted path, imported on first use so that no backend's imports load unless it is used.
_REGISTRY: dict[str, str] = {
    "local": "workspaces.backends.local.LocalBackend",
    "bubblewrap": "workspaces.backends.bubblewrap.BubblewrapBackend",
}
_instances: dict[str, ExecutionBackend] = {}


def get_backend(name: str) -> ExecutionBackend:
    """The backend registered under `name` (e.g. a Workspace's `backend` field)."""
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"Unknown workspace backend {name!r}: use one of {known}.")
    if name not in _instances:
        _instances[name] = import_string(_REGISTRY[name])()
    return _instances[name]
