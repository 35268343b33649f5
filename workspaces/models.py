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
    BUBBLEWRAP = "bubblewrap", "Sandbox (bubblewrap: no network, read-only system, private /workspace)"


class WorkspaceStatus(models.TextChoices):
    """Lifecycle of a workspace."""

    READY = "ready", "Ready"
    STOPPED = "stopped", "Stopped (files kept)"
    DELETED = "deleted", "Deleted (files removed)"


class WorkspaceTemplate(models.Model):
    """A kind of workspace the agent may start, chosen by its name and description: where and within what
    limits its commands run. A limit left empty takes the deployment's default."""

    organization = models.ForeignKey(
        "organizations.Organization", on_delete=models.CASCADE, related_name="workspace_templates"
    )
    name = models.CharField(max_length=63)
    description = models.TextField()
    backend = models.CharField(max_length=32, choices=WorkspaceBackend.choices, default=WorkspaceBackend.BUBBLEWRAP)
    command_timeout_seconds = models.PositiveIntegerField(null=True, blank=True)
    output_cap_bytes = models.PositiveIntegerField(null=True, blank=True)
    memory_limit_mb = models.PositiveIntegerField(null=True, blank=True)
    is_enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "name"], name="workspace_template_unique_name"),
        ]

    def __str__(self) -> str:
        return self.name


class Workspace(models.Model):
    """A place where commands run on behalf of an agent session, with the limits of the template it started
    from copied in (a later edit of the template does not change a running workspace)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey("organizations.Organization", on_delete=models.CASCADE, related_name="workspaces")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="workspaces")
    name = models.CharField(max_length=200)
    backend = models.CharField(max_length=32, choices=WorkspaceBackend.choices, default=WorkspaceBackend.LOCAL)
    directory = models.CharField(max_length=1000)
    template = models.ForeignKey(
        WorkspaceTemplate, on_delete=models.SET_NULL, null=True, blank=True, related_name="workspaces"
    )
    command_timeout_seconds = models.PositiveIntegerField(null=True, blank=True)
    output_cap_bytes = models.PositiveIntegerField(null=True, blank=True)
    memory_limit_mb = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=WorkspaceStatus.choices, default=WorkspaceStatus.READY)
    created_at = models.DateTimeField(auto_now_add=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    # When a command last started in it (set as it starts, so a long command counts as use while it runs).
    last_used_at = models.DateTimeField(null=True, blank=True)

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
