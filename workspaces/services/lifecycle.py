"""The end of a workspace's life: stop it (no command runs in it any more; its files stay), then delete its files.

`workspaces_prune` does both for workspaces nobody used for a while (`AIRLOCK_WORKSPACE_IDLE_DAYS`, off unless
set): run daily by the `workspaces.prune` task and by `manage.py workspaces prune`. Each step is audited.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

import audit
from audit.services import Actor, AgentActor
from workspaces.models import Workspace, WorkspaceStatus

logger = logging.getLogger(__name__)


def _session_id(actor: Actor) -> str | None:
    return actor.session_id if isinstance(actor, AgentActor) else None


@transaction.atomic
def workspace_stop(*, actor: Actor, workspace: Workspace, reason: str, **data: Any) -> Workspace:
    """Stop a ready workspace: commands are refused from now on, its files stay. Audited as `workspace.stopped`
    with the reason (and `data`); a workspace that is not ready is returned as it is."""
    locked = Workspace.objects.select_for_update().select_related("organization").get(pk=workspace.pk)
    if locked.status != WorkspaceStatus.READY:
        return locked
    locked.status = WorkspaceStatus.STOPPED
    locked.stopped_at = timezone.now()
    locked.save(update_fields=["status", "stopped_at"])
    audit.record(
        action="workspace.stopped",
        actor=actor,
        organization=locked.organization,
        target=locked,
        workspace_id=locked.pk,
        session_id=_session_id(actor),
        data={"reason": reason, **data},
    )
    return locked


def _size(directory: Path) -> tuple[int, int]:
    """Bytes and files under a directory, without following links."""
    total = files = 0
    for root, _dirs, names in os.walk(directory):
        for name in names:
            try:
                total += (Path(root) / name).lstat().st_size
            except OSError:
                continue
            files += 1
    return total, files


@transaction.atomic
def workspace_delete_files(*, actor: Actor, workspace: Workspace) -> Workspace:
    """Remove a stopped workspace's directory (the row stays, status `deleted`, for the audit trail's sake).
    Audited as `workspace.files_deleted` with how much was removed; a workspace that is not stopped is refused."""
    locked = Workspace.objects.select_for_update().select_related("organization").get(pk=workspace.pk)
    if locked.status != WorkspaceStatus.STOPPED:
        raise ValidationError(f"Workspace {locked.name!r} is {locked.status}: stop it before deleting its files.")
    directory = Path(locked.directory)
    root = Path(settings.WORKSPACES_ROOT).resolve()
    if not directory.is_absolute() or directory.resolve().parent.parent != root:
        # Only ever WORKSPACES_ROOT/<organization>/<workspace>: never an empty, relative or moved path.
        raise ValidationError(
            f"Workspace {locked.name!r} lives at {locked.directory!r}, not in a folder of AIRLOCK_WORKSPACES_ROOT "
            f"({root}): its files are left alone; remove them by hand."
        )
    size, files = _size(directory) if directory.is_dir() else (0, 0)
    locked.status = WorkspaceStatus.DELETED
    locked.save(update_fields=["status"])
    audit.record(
        action="workspace.files_deleted",
        actor=actor,
        organization=locked.organization,
        target=locked,
        workspace_id=locked.pk,
        data={"directory": str(directory), "bytes": size, "files": files},
    )
    if directory.is_dir():  # last: a failure rolls the row back to stopped, with whatever files remain
        shutil.rmtree(directory, onerror=_writable_then_retry)
    return locked


def _writable_then_retry(function: Any, path: str, _info: Any) -> None:
    """rmtree's error handler: a command may have left a folder without write or search rights for its owner."""
    parent = Path(path).parent
    parent.chmod(parent.stat().st_mode | 0o700)
    if Path(path).is_dir() and not Path(path).is_symlink():
        Path(path).chmod(0o700)
    function(path)


@dataclass
class PruneResult:
    """What a prune stopped and whose files it deleted (or would, in a dry run)."""

    stopped: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # stopped workspaces whose files could not be deleted


def workspaces_prune(
    *, actor: Actor, idle_days: int, dry_run: bool = False, now: dt.datetime | None = None
) -> PruneResult:
    """Stop ready workspaces with no command (and no start) in `idle_days`, and delete the files of workspaces
    stopped more than `idle_days` ago; each workspace in its own transaction. Names are `<org slug>/<name>`."""
    if idle_days < 1:
        raise ValidationError({"idle_days": "Use a whole number of days, 1 or more."})
    cutoff = (now or timezone.now()) - dt.timedelta(days=idle_days)
    result = PruneResult()
    idle = (
        Workspace.objects.filter(status=WorkspaceStatus.READY)
        .annotate(last_used=Coalesce(Max("command_runs__started_at"), "created_at"))
        .filter(last_used__lt=cutoff)
        .select_related("organization")
        .order_by("created_at")
    )
    for workspace in idle:
        result.stopped.append(f"{workspace.organization.slug}/{workspace.name}")
        if not dry_run:
            workspace_stop(actor=actor, workspace=workspace, reason="idle", idle_days=idle_days)
    stale = (
        Workspace.objects.filter(status=WorkspaceStatus.STOPPED)
        .filter(Q(stopped_at__lt=cutoff) | Q(stopped_at__isnull=True, created_at__lt=cutoff))
        .select_related("organization")
        .order_by("created_at")
    )
    for workspace in stale:
        name = f"{workspace.organization.slug}/{workspace.name}"
        if dry_run:
            result.deleted.append(name)
            continue
        try:
            workspace_delete_files(actor=actor, workspace=workspace)
        except (OSError, ValidationError) as exc:  # stays stopped, with its files; the next prune tries again
            logger.warning("workspace %s: files not deleted: %s", name, exc)
            result.failed.append(name)
        else:
            result.deleted.append(name)
    return result
