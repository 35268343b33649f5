"""Fixtures for workspace tests: a private WORKSPACES_ROOT, an output collector, process checks."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from organizations.models import Organization
from tests.sandbox import let_sandbox_reach
from workspaces.models import Workspace
from workspaces.services import workspace_create


class Lines:
    """An on_line callback that remembers every line it was given."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.seen = asyncio.Event()

    async def __call__(self, line: str) -> None:
        self.lines.append(line)
        self.seen.set()


@pytest.fixture(autouse=True)
def workspaces_root(settings, tmp_path: Path) -> Path:
    """Every workspace directory of the test lives under tmp_path."""
    root = let_sandbox_reach(tmp_path / "workspaces")
    settings.WORKSPACES_ROOT = root
    return root


@pytest.fixture
def lines() -> Lines:
    """Collects the output lines of a command."""
    return Lines()


@pytest.fixture
def workspace(org: Organization, owner) -> Workspace:
    """A ready workspace of acme, owned by its owner, created through the service."""
    return workspace_create(actor=owner, organization=org, owner=owner, name="scratch")


def unsaved_workspace(organization_id: int = 1, name: str = "bare") -> Workspace:
    """A workspace row that is never saved: enough for the backend, which touches no database."""
    return Workspace(id=uuid.uuid4(), organization_id=organization_id, name=name)


def process_alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in {"Z", "X"}


def wait_until_gone(pid: int, within: float = 5.0) -> bool:
    """Poll until the process is gone; True if it went within the time."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return True
        time.sleep(0.05)
    return not process_alive(pid)


def child_pid(lines: list[str]) -> int:
    """The pid a test command printed as `child=<pid>`."""
    return int(next(line for line in lines if line.startswith("child=")).split("=", 1)[1])
