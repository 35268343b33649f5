"""Workspaces where the agent runs commands, and the record of each command."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import models

from organizations.tenancy import TenantQuerySet

if TYPE_CHECKING:
    from workspaces.backends.base import ExecutionResult


class WorkspaceBackend(models.TextChoices):
    """How a workspace executes commands."""

    LOCAL = "local", "Local directory (no sandbox)"


class WorkspaceStatus(models.TextChoices):
    """Lifecycle of a workspace."""

    READY = "ready", "Ready"
    STOPPED = "stopped", "Stopped"


class Workspace(models.Model):
    """A place where commands run on behalf of an agent session."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey("organizations.Organization", on_delete=models.CASCADE, related_name="workspaces")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="workspaces")
    name = models.CharField(max_length=200)
    backend = models.CharField(max_length=32, choices=WorkspaceBackend.choices, default=WorkspaceBackend.LOCAL)
    directory = models.CharField(max_length=1000)
    status = models.CharField(max_length=16, choices=WorkspaceStatus.choices, default=WorkspaceStatus.READY)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name


class CommandRun(models.Model):
    """One command run in a workspace: what ran, how it ended, how much it printed."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey("organizations.Organization", on_delete=models.CASCADE, related_name="+")
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="command_runs")
    command = models.TextField()
    working_directory = models.CharField(max_length=1000)
    exit_code = models.IntegerField(null=True)
    timed_out = models.BooleanField(default=False)
    output_truncated = models.BooleanField(default=False)
    output_bytes = models.BigIntegerField(default=0)
    output_sha256 = models.CharField(max_length=64, blank=True, default="")
    duration_ms = models.IntegerField(default=0)
    started_at = models.DateTimeField()

    objects = TenantQuerySet.as_manager()

    # Not stored: on the run that `command_execute` returns, the backend's full result (captured output included).
    result: ExecutionResult | None = None

    class Meta:
        ordering = ["started_at"]

    def __str__(self) -> str:
        return self.command[:80]
