"""The retention purge's way through the append-only trigger, and append-only signed checkpoints (PostgreSQL).

`audit_event_append_only()` (from 0002) still refuses every UPDATE. A DELETE passes only when all of these hold:

- the transaction switched the purge on with `SET LOCAL airlock.audit_purge = 'on'` (only
  `audit.retention.audit_purge` does that, and only around its own DELETE; `SET LOCAL` ends with the transaction);
- the event lies at or before its organization's chain anchor (`audit_auditchainhead.anchor_sequence`), which the
  purge moves first, in the same transaction: nothing can be deleted without re-anchoring the chain;
- the event is not the chain's last one.

This stops bugs, cascades, shells and a compromised web process that does not know the path. It is not a wall
against someone holding database superuser rights (who can switch triggers off); the hash chain and the signed
checkpoints are what reveal such tampering.

Checkpoint rows (`audit_auditcheckpoint`) get a trigger of their own that refuses every UPDATE and DELETE, with no
way through: a purge never removes a checkpoint.

Nothing happens on SQLite.
"""

from django.db import migrations

FUNCTION = "audit_event_append_only"
CHECKPOINT_FUNCTION = "audit_checkpoint_append_only"
CHECKPOINT_TRIGGER = "audit_checkpoint_append_only"

REFUSE_ALL = """
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    RAISE EXCEPTION USING
        MESSAGE = 'audit events are append-only: ' || TG_OP || ' on ' || TG_TABLE_NAME || ' is refused',
        HINT = 'Audit events are never updated or deleted; retention purges use their own privileged path.';
END;
$body$
"""

PURGE_PATH = """
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $body$
DECLARE
    head_anchor bigint;
    head_sequence bigint;
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('airlock.audit_purge', true) = 'on' THEN
        SELECT anchor_sequence, sequence INTO head_anchor, head_sequence
            FROM {head_table} WHERE organization_id = OLD.organization_id;
        IF head_anchor IS NOT NULL AND OLD.sequence <= head_anchor AND OLD.sequence < head_sequence THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION USING
            MESSAGE = 'audit purge refused: event #' || OLD.sequence || ' is not before the chain anchor',
            HINT = 'The purge moves the chain anchor first, then deletes the events up to it.';
    END IF;
    RAISE EXCEPTION USING
        MESSAGE = 'audit events are append-only: ' || TG_OP || ' on ' || TG_TABLE_NAME || ' is refused',
        HINT = 'Audit events are never updated or deleted; retention purges use their own privileged path.';
END;
$body$
"""

CHECKPOINT_REFUSE_ALL = """
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    RAISE EXCEPTION USING
        MESSAGE = 'audit checkpoints are append-only: ' || TG_OP || ' on ' || TG_TABLE_NAME || ' is refused',
        HINT = 'A signed checkpoint is never changed or removed.';
END;
$body$
"""


def _table(apps, schema_editor, model: str) -> str:
    return schema_editor.quote_name(apps.get_model("audit", model)._meta.db_table)


def open_purge_path(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    head_table = _table(apps, schema_editor, "AuditChainHead")
    schema_editor.execute(PURGE_PATH.format(function=FUNCTION, head_table=head_table))
    checkpoints = _table(apps, schema_editor, "AuditCheckpoint")
    schema_editor.execute(CHECKPOINT_REFUSE_ALL.format(function=CHECKPOINT_FUNCTION))
    schema_editor.execute(f"DROP TRIGGER IF EXISTS {CHECKPOINT_TRIGGER} ON {checkpoints}")
    schema_editor.execute(
        f"CREATE TRIGGER {CHECKPOINT_TRIGGER} BEFORE UPDATE OR DELETE ON {checkpoints} "
        f"FOR EACH ROW EXECUTE FUNCTION {CHECKPOINT_FUNCTION}()"
    )


def close_purge_path(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(REFUSE_ALL.format(function=FUNCTION))
    checkpoints = _table(apps, schema_editor, "AuditCheckpoint")
    schema_editor.execute(f"DROP TRIGGER IF EXISTS {CHECKPOINT_TRIGGER} ON {checkpoints}")
    schema_editor.execute(f"DROP FUNCTION IF EXISTS {CHECKPOINT_FUNCTION}()")


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0003_policy_exports_forwarding"),
    ]

    operations = [
        migrations.RunPython(open_purge_path, close_purge_path, elidable=False),
    ]
