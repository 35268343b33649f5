"""Make audit events append-only on PostgreSQL: a trigger rejects every UPDATE and DELETE of a row.

The application never changes or removes an event; this makes the database refuse it too, whoever asks
(a bug, a shell, a compromised web process). Someone with superuser rights can still switch triggers off
(`SET session_replication_role = replica`); the hash chain is what reveals such tampering.

There is deliberately no TRUNCATE trigger: the test runner empties tables with TRUNCATE between
transactional tests. The retention purge will get its own privileged path (a separate role or a
SECURITY DEFINER function that deletes expired events, records `audit.purged` and re-anchors the chain
head), not a hole in this trigger.

Nothing happens on SQLite: the embedded default has no second database user to protect against, and the
test runner empties SQLite tables with DELETE.
"""

from django.db import migrations

FUNCTION = "audit_event_append_only"
TRIGGER = "audit_event_append_only"


def create_trigger(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    table = schema_editor.quote_name(apps.get_model("audit", "AuditEvent")._meta.db_table)
    schema_editor.execute(
        f"""
        CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $body$
        BEGIN
            RAISE EXCEPTION USING
                MESSAGE = 'audit events are append-only: ' || TG_OP || ' on ' || TG_TABLE_NAME || ' is refused',
                HINT = 'Audit events are never updated or deleted; retention purges use their own privileged path.';
        END;
        $body$
        """
    )
    schema_editor.execute(f"DROP TRIGGER IF EXISTS {TRIGGER} ON {table}")
    schema_editor.execute(
        f"CREATE TRIGGER {TRIGGER} BEFORE UPDATE OR DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION {FUNCTION}()"
    )


def drop_trigger(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    table = schema_editor.quote_name(apps.get_model("audit", "AuditEvent")._meta.db_table)
    schema_editor.execute(f"DROP TRIGGER IF EXISTS {TRIGGER} ON {table}")
    schema_editor.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}()")


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0001_initial"),
    ]

    operations = [
        migrations.RunPython(create_trigger, drop_trigger, elidable=False),
    ]
