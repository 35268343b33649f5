"""Test helper: let the sandbox's unprivileged host user reach a workspaces root under pytest's private tmp."""

from __future__ import annotations

import os
from pathlib import Path


def let_sandbox_reach(root: Path) -> Path:
    """Make every folder above `root` traversable by others (pytest makes its base folder owner-only); as root only,
    where bubblewrap runs as an unprivileged per-organization host user."""
    if os.geteuid() == 0:
        for folder in Path(root).absolute().parents:
            mode = folder.stat().st_mode
            if not mode & 0o001:
                folder.chmod(mode & 0o7777 | 0o711)
    return root
