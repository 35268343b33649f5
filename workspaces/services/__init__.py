"""Workspace writes: workspaces and their commands (`workspaces`), their end (`lifecycle`: stop, delete the files,
prune the idle ones) and the templates agents start them from (`templates`). Every function is keyword-only and
audits in the same transaction."""

from workspaces.services.lifecycle import workspace_delete_files, workspace_stop, workspaces_prune
from workspaces.services.templates import template_create, template_delete, template_update
from workspaces.services.workspaces import command_execute, workspace_create

__all__ = [
    "command_execute",
    "template_create",
    "template_delete",
    "template_update",
    "workspace_create",
    "workspace_delete_files",
    "workspace_stop",
    "workspaces_prune",
]
