"""Execution backends: where a workspace's commands run (see `base.ExecutionBackend`)."""

from workspaces.backends.base import (
    ExecutionBackend,
    ExecutionError,
    ExecutionResult,
    OutputCallback,
    get_backend,
)

__all__ = ["ExecutionBackend", "ExecutionError", "ExecutionResult", "OutputCallback", "get_backend"]
