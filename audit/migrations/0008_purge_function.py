"""The retention purge as a database function, so that the runtime role needs no DELETE on audit events (PostgreSQL).

`airlock_audit_purge(organization, through)` runs with its owner's rights (SECURITY DEFINER, the role that ran the
migrations). It locks the organization's chain head and refuses, naming the reason, unless:

- the organization has a retention and no legal hold;
- `through` lies after the chain anchor and before the chain's last event;
- `through` lies before the event of the newest signed checkpoint;
- every SIEM destination, paused ones included, has acknowledged `through`.

Then it moves the anchor to `through` (with that event's hash), opens the trigger's purge path for its own DELETE
only, deletes the events up to the anchor and returns how many. Which events have expired is decided by
`audit.retention.audit_purge`, which calls it and records `audit.purged` in the same transaction.

With `python manage.py audit grants --role ROLE`, the role the services connect as gets EXECUTE on this function
and neither UPDATE nor DELETE nor TRUNCATE on events and checkpoints, nor UPDATE of the anchor: deleting audit
events then takes the owner's credentials, not the application's.

Nothing happens on SQLite.
"""

from django.db import migrations

FUNCTION = "airlock_audit_purge"
SIGNATURE = f"{FUNCTION}(bigint, bigint)"

PURGE_FUNCTION = """
CREATE OR REPLACE FUNCTION {function}(p_organization_id bigint, p_through bigint) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = {schema}, pg_temp AS $body$
DECLARE
    v_head bigint;
    v_anchor bigint;
    v_days integer;
    v_hold boolean;
    v_checkpoint bigint;
    v_delivered bigint;
    v_hash text;
    v_deleted bigint;
BEGIN
    SELECT sequence, anchor_sequence INTO v_head, v_anchor
        FROM {head} WHERE organization_id = p_organization_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING MESSAGE = 'audit purge refused: organization ' || p_organization_id || ' has no chain';
    END IF;
    SELECT retention_days, legal_hold INTO v_days, v_hold FROM {settings} WHERE organization_id = p_organization_id;
    IF v_days IS NULL THEN
        RAISE EXCEPTION USING MESSAGE = 'audit purge refused: the organization keeps its events forever (no retention)';
    END IF;
    IF v_hold THEN
        RAISE EXCEPTION USING MESSAGE = 'audit purge refused: the organization is under legal hold';
    END IF;
    IF p_through <= v_anchor THEN
        RAISE EXCEPTION USING
            MESSAGE = 'audit purge refused: event #' || p_through || ' is not after the chain anchor #' || v_anchor;
    END IF;
    IF p_through >= v_head THEN
        RAISE EXCEPTION USING
            MESSAGE = 'audit purge refused: the chain''s last event #' || v_head || ' is always kept';
    END IF;
    SELECT max(sequence) INTO v_checkpoint FROM {checkpoints} WHERE organization_id = p_organization_id;
    IF p_through >= v_checkpoint THEN
        RAISE EXCEPTION USING MESSAGE = 'audit purge refused: events from #' || v_checkpoint
            || ', the newest signed checkpoint''s event, on are kept';
    END IF;
    SELECT min(delivered_sequence) INTO v_delivered FROM {destinations} WHERE organization_id = p_organization_id;
    IF p_through > v_delivered THEN
        RAISE EXCEPTION USING MESSAGE = 'audit purge refused: events after #' || v_delivered
            || ' are not yet delivered to every SIEM destination';
    END IF;
    SELECT hash INTO v_hash FROM {events} WHERE organization_id = p_organization_id AND sequence = p_through;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING MESSAGE = 'audit purge refused: event #' || p_through || ' is missing';
    END IF;
    -- The anchor moves first: the append-only trigger lets through only events at or before it.
    UPDATE {head} SET anchor_sequence = p_through, anchor_hash = v_hash WHERE organization_id = p_organization_id;
    PERFORM set_config('airlock.audit_purge', 'on', true);
    DELETE FROM {events} WHERE organization_id = p_organization_id AND sequence > v_anchor AND sequence <= p_through;
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    PERFORM set_config('airlock.audit_purge', 'off', true);
    RETURN v_deleted;
END;
$body$
"""


def _table(apps, schema_editor, model: str) -> str:
    return schema_editor.quote_name(apps.get_model("audit", model)._meta.db_table)


def create_purge_function(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT current_schema()")
        schema = cursor.fetchone()[0]
    schema_editor.execute(
        PURGE_FUNCTION.format(
            function=FUNCTION,
            schema=schema_editor.quote_name(schema),
            head=_table(apps, schema_editor, "AuditChainHead"),
            settings=_table(apps, schema_editor, "AuditSettings"),
            checkpoints=_table(apps, schema_editor, "AuditCheckpoint"),
            destinations=_table(apps, schema_editor, "AuditDestination"),
            events=_table(apps, schema_editor, "AuditEvent"),
        )
    )
    # Functions are executable by PUBLIC unless revoked; `audit grants` gives EXECUTE to the runtime role.
    schema_editor.execute(f"REVOKE ALL ON FUNCTION {SIGNATURE} FROM PUBLIC")


def drop_purge_function(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(f"DROP FUNCTION IF EXISTS {SIGNATURE}")


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0007_destination_client_certificate"),
    ]

    operations = [
        migrations.RunPython(create_purge_function, drop_purge_function, elidable=False),
    ]
