"""A workspace's lifecycle: when it stopped, when a command last started in it, and the `deleted` status.

Workspaces stopped before this migration get `stopped_at` = now (their files then stay a full idle period), and
every workspace's `last_used_at` is its last command's start.
"""

from django.db import migrations, models
from django.db.models import Max, OuterRef, Subquery
from django.utils import timezone


def backfill(apps, schema_editor):
    Workspace = apps.get_model("workspaces", "Workspace")
    CommandRun = apps.get_model("workspaces", "CommandRun")
    Workspace.objects.filter(status="stopped", stopped_at__isnull=True).update(stopped_at=timezone.now())
    last = CommandRun.objects.filter(workspace=OuterRef("pk")).values("workspace").annotate(last=Max("started_at"))
    Workspace.objects.update(last_used_at=Subquery(last.values("last")[:1]))


class Migration(migrations.Migration):
    dependencies = [
        ("workspaces", "0002_templates"),
    ]

    operations = [
        migrations.AddField(
            model_name="workspace",
            name="stopped_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="workspace",
            name="last_used_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AlterField(
            model_name="workspace",
            name="status",
            field=models.CharField(
                choices=[
                    ("ready", "Ready"),
                    ("stopped", "Stopped (files kept)"),
                    ("deleted", "Deleted (files removed)"),
                ],
                default="ready",
                max_length=16,
            ),
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
