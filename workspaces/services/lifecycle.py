"""The end of a workspace's life: stop it (no command runs in it any more; its files stay), then delete its files.

`workspaces_prune` does both for workspaces nobody used for a while (`AIRLOCK_WORKSPACE_IDLE_DAYS`, off unless
set): run daily by the `workspaces.prune` task and by `manage.py workspaces prune`. Each step is audited, a failed
deletion too.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.db import transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

import audit
from audit.models import Outcome
from audit.services import Actor
from workspaces.models import Workspace, WorkspaceStatus

logger = logging.getLogger(__name__)

MAX_IDLE_DAYS = 36_500


def _idle_since(cutoff: dt.datetime) -> Q:
    """Workspaces with no command started (and no start) since `cutoff`."""
    return Q(last_used_at__lt=cutoff) | Q(last_used_at__isnull=True, created_at__lt=cutoff)


@transaction.atomic
def workspace_stop(
    *, actor: Actor, workspace: Workspace, reason: str, idle_before: dt.datetime | None = None, **data: Any
) -> bool:
    """Stop a ready workspace: commands are refused from now on, its files stay. Audited as `workspace.stopped`
    with the reason (and `data`). Whether it stopped it: a workspace that is not ready, or (with `idle_before`)
    was used since, is left as it is."""
    rows = Workspace.objects.select_for_update().select_related("organization").filter(pk=workspace.pk)
    if idle_before is not None:
        rows = rows.filter(_idle_since(idle_before))
    locked = rows.filter(status=WorkspaceStatus.READY).first()
    if locked is None:
        return False
    locked.status = WorkspaceStatus.STOPPED
    locked.stopped_at = timezone.now()
    locked.save(update_fields=["status", "stopped_at"])
    audit.record(
        action="workspace.stopped",
        actor=actor,
        organization=locked.organization,
        target=locked,
        workspace_id=locked.pk,
        data={"reason": reason, **data},
    )
    return True


def _checked_directory(workspace: Workspace) -> Path:
    """The workspace's folder, if it is one: WORKSPACES_ROOT/<organization>/<workspace>, not a link."""
    directory = Path(workspace.directory)
    root = Path(settings.WORKSPACES_ROOT).resolve()
    if (
        not directory.is_absolute()
        or directory.is_symlink()
        or directory.resolve().parent.parent != root
        or directory.name != str(workspace.pk)
    ):
        raise ValidationError(
            f"Workspace {workspace.name!r} lives at {workspace.directory!r}, not in its folder of "
            f"AIRLOCK_WORKSPACES_ROOT ({root}): its files are left alone; remove them by hand."
        )
    return directory


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


def _make_removable(directory: Path) -> None:
    """Give the owner full rights on every folder below (a command may have locked some), never through a link."""
    for folder, subfolders, _files in os.walk(directory, onerror=None):
        for name in [folder, *(os.path.join(folder, sub) for sub in subfolders)]:
            status = os.lstat(name)
            if stat.S_ISDIR(status.st_mode) and status.st_mode & 0o700 != 0o700:
                os.chmod(name, status.st_mode | 0o700, follow_symlinks=False)


def _record_deletion(workspace: Workspace, actor: Actor, outcome: str, error: str, data: dict[str, Any]) -> None:
    audit.record(
        action="workspace.files_deleted",
        actor=actor,
        organization=workspace.organization,
        target=workspace,
        workspace_id=workspace.pk,
        outcome=outcome,
        error=error,
        data=data,
    )


def workspace_delete_files(*, actor: Actor, workspace: Workspace) -> Workspace:
    """Remove a stopped workspace's folder (the row stays, status `deleted`, for the audit trail's sake), audited as
    `workspace.files_deleted` with how much went. Refused for a workspace that is not stopped or whose stored path
    is not its folder under the workspaces root; a deletion that fails is audited as a failure and raised.

    The files go outside any transaction (a removal cannot be rolled back): the checks first, then the removal,
    then the status and the event together."""
    current = Workspace.objects.select_related("organization").get(pk=workspace.pk)
    if current.status != WorkspaceStatus.STOPPED:
        raise ValidationError(f"Workspace {current.name!r} is {current.status}: stop it before deleting its files.")
    directory = _checked_directory(current)
    size, files = _size(directory) if directory.is_dir() else (0, 0)
    try:
        if directory.is_dir():
            _make_removable(directory)
            shutil.rmtree(directory)
        if os.path.lexists(directory):
            raise OSError(f"{directory} is still there after its removal")
    except OSError as exc:
        with transaction.atomic():
            _record_deletion(
                current, actor, Outcome.FAILURE, f"The files could not be deleted: {exc}", {"directory": str(directory)}
            )
        raise
    with transaction.atomic():
        updated = Workspace.objects.filter(pk=current.pk, status=WorkspaceStatus.STOPPED).update(
            status=WorkspaceStatus.DELETED
        )
        if updated:  # else a concurrent prune recorded it already
            current.status = WorkspaceStatus.DELETED
            _record_deletion(
                current, actor, Outcome.SUCCESS, "", {"directory": str(directory), "bytes": size, "files": files}
            )
    return current


@dataclass
class PruneResult:
    """What a prune stopped and whose files it deleted (or would, in a dry run)."""

    stopped: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # workspaces left as they were, each logged with the reason


def workspaces_prune(
    *, actor: Actor, idle_days: int, dry_run: bool = False, now: dt.datetime | None = None
) -> PruneResult:
    """Stop ready workspaces with no command (and no start) in `idle_days`, and delete the files of workspaces
    stopped more than `idle_days` ago; each workspace in its own transaction. Names are `<org slug>/<name>`."""
    if isinstance(idle_days, bool) or not isinstance(idle_days, int) or not 1 <= idle_days <= MAX_IDLE_DAYS:
        raise ValidationError({"idle_days": f"Use a whole number of days from 1 to {MAX_IDLE_DAYS}."})
    cutoff = (now or timezone.now()) - dt.timedelta(days=idle_days)
    result = PruneResult()
    idle = Workspace.objects.filter(_idle_since(cutoff), status=WorkspaceStatus.READY).select_related("organization")
    for workspace in idle.order_by("created_at"):
        name = f"{workspace.organization.slug}/{workspace.name}"
        if dry_run:
            result.stopped.append(name)
            continue
        if workspace_stop(actor=actor, workspace=workspace, reason="idle", idle_before=cutoff, idle_days=idle_days):
            result.stopped.append(name)
    stale = (
        Workspace.objects.filter(status=WorkspaceStatus.STOPPED)
        .annotate(since=Coalesce(F("stopped_at"), F("created_at")))
        .filter(since__lt=cutoff)
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
        except (OSError, ValidationError, ObjectDoesNotExist) as exc:  # left as it is; the next prune tries again
            logger.warning("workspace %s: files not deleted: %s", name, exc)
            result.failed.append(name)
        else:
            result.deleted.append(name)
    return result
