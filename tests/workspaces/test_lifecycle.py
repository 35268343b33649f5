"""The end of a workspace's life: idle ones stop, long-stopped ones lose their files, each step audited."""

from __future__ import annotations

import datetime as dt
from io import StringIO
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.utils import timezone

from audit.models import AuditEvent
from workspaces.models import CommandRun, Workspace
from workspaces.services import workspace_create, workspace_delete_files, workspace_stop, workspaces_prune
from workspaces.tasks import prune


def made(org, owner, name: str, *, days_ago: int, used_days_ago: int | None = None) -> Workspace:
    """A workspace created `days_ago`, with one command `used_days_ago` if given, and a file in its directory."""
    workspace = workspace_create(actor=owner, organization=org, owner=owner, name=name)
    (Path(workspace.directory) / "notes.txt").write_text("kept until pruned\n")
    Workspace.objects.filter(pk=workspace.pk).update(created_at=timezone.now() - dt.timedelta(days=days_ago))
    if used_days_ago is not None:
        used = timezone.now() - dt.timedelta(days=used_days_ago)
        Workspace.objects.filter(pk=workspace.pk).update(last_used_at=used)  # as a command's start records it
        CommandRun.objects.create(
            organization=org,
            workspace=workspace,
            command="ls",
            working_directory=workspace.directory,
            exit_code=0,
            started_at=used,
        )
    workspace.refresh_from_db()
    return workspace


def test_prune_stops_idle_workspaces_and_keeps_recently_used_ones(org, owner):
    idle = made(org, owner, "idle", days_ago=40)
    made(org, owner, "busy", days_ago=40, used_days_ago=2)
    made(org, owner, "fresh", days_ago=1)

    result = workspaces_prune(actor=None, idle_days=30)

    assert result.stopped == ["acme/idle"] and result.deleted == []
    statuses = {w.name: w.status for w in Workspace.objects.all()}
    assert statuses == {"idle": "stopped", "busy": "ready", "fresh": "ready"}
    assert Path(idle.directory, "notes.txt").exists()  # stopping keeps the files
    stopped = AuditEvent.objects.get(action="workspace.stopped")
    assert stopped.workspace_id == str(idle.pk) and stopped.data == {"reason": "idle", "idle_days": 30}


def test_prune_deletes_the_files_of_long_stopped_workspaces_and_says_how_much(org, owner):
    old = made(org, owner, "old", days_ago=90)
    workspace_stop(actor=owner, workspace=old, reason="test")
    Workspace.objects.filter(pk=old.pk).update(stopped_at=timezone.now() - dt.timedelta(days=31))

    result = workspaces_prune(actor=None, idle_days=30)

    assert result.deleted == ["acme/old"]
    old.refresh_from_db()
    assert old.status == "deleted" and not Path(old.directory).exists()
    deleted = AuditEvent.objects.get(action="workspace.files_deleted")
    assert deleted.data == {"directory": old.directory, "bytes": 18, "files": 1}


def test_a_dry_run_changes_nothing_and_the_cli_reports_it(org, owner):
    made(org, owner, "idle", days_ago=40)
    out = StringIO()

    call_command("workspaces", "prune", "--idle-days", "30", "--dry-run", stdout=out)

    assert "would stop 1: acme/idle" in out.getvalue()
    assert Workspace.objects.get().status == "ready"
    assert not AuditEvent.objects.filter(action="workspace.stopped").exists()
    with pytest.raises(CommandError, match="from 1 to 36500"):
        call_command("workspaces", "prune", "--idle-days", "0")


def test_only_a_stopped_workspace_loses_its_files(org, owner):
    ready = made(org, owner, "ready", days_ago=1)

    with pytest.raises(ValidationError, match="stop it before deleting its files"):
        workspace_delete_files(actor=owner, workspace=ready)
    assert Path(ready.directory, "notes.txt").exists()


def test_the_daily_task_is_off_until_the_operator_sets_idle_days(org, owner, settings):
    made(org, owner, "idle", days_ago=40)

    assert prune() == 0 and Workspace.objects.get().status == "ready"
    settings.WORKSPACE_IDLE_DAYS = 30
    assert prune() == 1 and Workspace.objects.get().status == "stopped"


def test_a_workspace_whose_files_cannot_go_stays_stopped_and_the_others_are_pruned(org, owner, monkeypatch):
    import workspaces.services.lifecycle as lifecycle

    stuck, gone = made(org, owner, "stuck", days_ago=90), made(org, owner, "gone", days_ago=90)
    for workspace in (stuck, gone):
        workspace_stop(actor=owner, workspace=workspace, reason="test")
    Workspace.objects.update(stopped_at=timezone.now() - dt.timedelta(days=31))
    real_rmtree = lifecycle.shutil.rmtree

    def rmtree(path, **kwargs):
        if str(path) == stuck.directory:
            raise PermissionError(13, "Permission denied", str(path))
        real_rmtree(path, **kwargs)

    monkeypatch.setattr(lifecycle.shutil, "rmtree", rmtree)

    result = workspaces_prune(actor=None, idle_days=30)

    assert result.deleted == ["acme/gone"] and result.failed == ["acme/stuck"]
    statuses = {w.name: w.status for w in Workspace.objects.all()}
    assert statuses == {"stuck": "stopped", "gone": "deleted"}
    assert Path(stuck.directory, "notes.txt").exists()
    outcomes = sorted(AuditEvent.objects.filter(action="workspace.files_deleted").values_list("outcome", flat=True))
    assert outcomes == ["failure", "success"]  # the failed deletion is recorded as one, not as done
    failed = AuditEvent.objects.get(action="workspace.files_deleted", outcome="failure")
    assert failed.workspace_id == str(stuck.pk) and "Permission denied" in failed.error


@pytest.mark.parametrize("where", ["", "relative/dir", "/", "{root}", "{root}/1", "/tmp/elsewhere/1/x"])
def test_files_are_deleted_only_from_a_workspace_folder_under_the_root(org, owner, workspaces_root, where):
    workspace = made(org, owner, "odd", days_ago=90)
    workspace_stop(actor=owner, workspace=workspace, reason="test")
    Workspace.objects.filter(pk=workspace.pk).update(directory=where.format(root=workspaces_root))

    with pytest.raises(ValidationError, match="its files are left alone"):
        workspace_delete_files(actor=owner, workspace=workspace)

    assert Path(workspace.directory, "notes.txt").exists() and Workspace.objects.get().status == "stopped"


def test_a_workspace_used_after_the_prune_looked_is_not_stopped(org, owner):
    workspace = made(org, owner, "raced", days_ago=40)
    cutoff = timezone.now() - dt.timedelta(days=30)
    Workspace.objects.filter(pk=workspace.pk).update(last_used_at=timezone.now())  # a command started meanwhile

    stopped = workspace_stop(actor=None, workspace=workspace, reason="idle", idle_before=cutoff)

    assert not stopped and Workspace.objects.get().status == "ready"
    assert not AuditEvent.objects.filter(action="workspace.stopped").exists()


def test_a_workspace_folder_swapped_for_a_link_is_left_alone(org, owner, tmp_path):
    workspace = made(org, owner, "linked", days_ago=90)
    workspace_stop(actor=owner, workspace=workspace, reason="test")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("x")
    Path(workspace.directory).rename(tmp_path / "moved")
    Path(workspace.directory).symlink_to(precious)

    with pytest.raises(ValidationError, match="its files are left alone"):
        workspace_delete_files(actor=owner, workspace=workspace)

    assert (precious / "keep.txt").exists()


def test_an_absurd_idle_period_is_refused_not_a_traceback(org):
    with pytest.raises(CommandError, match="from 1 to 36500"):
        call_command("workspaces", "prune", "--idle-days", "1000000")
