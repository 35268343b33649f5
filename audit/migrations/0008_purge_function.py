"""The retention purge as a database function, so that the role the services connect as needs no DELETE on events.

`airlock_audit_purge(organization, through)` runs with its owner's rights (SECURITY DEFINER: the role that ran the
migrations), with `search_path` pinned to pg_catalog and every table named with its schema, so no object the
caller creates can stand in for one it uses, and with the UTC time zone, so a day is 24 hours whatever the caller's
session says. It locks the organization's chain head and refuses, naming the
reason, unless:

- the organization has a retention and no legal hold (the settings row is locked against a hold set meanwhile);
- `through` lies after the chain anchor and before the chain's last event;
- every event up to `through` is older than the retention by the database's clock;
- `through` lies before the event of the newest signed checkpoint;
- every SIEM destination, paused ones included, has acknowledged `through`.

Then it moves the anchor to `through` (with that event's hash), opens the append-only trigger's purge path for its
own DELETE only, deletes the events, writes an `AuditPurge` row (append-only: a trigger refuses to change or
delete one) and returns how many events went. `audit.retention.audit_purge` decides what has expired, calls it and
records `audit.purged` in the same transaction; `audit verify` reports a purge row without its `audit.purged`.

The event table's trigger function (0004) is replaced by the same rules with its tables named with their schema
and its own pinned `search_path`, since the purge's DELETE runs it with the owner's rights.

With `python manage.py audit grants --role ROLE`, the role the services connect as gets EXECUTE on this function
and neither UPDATE nor DELETE nor TRUNCATE on events, checkpoints and purge rows, nor UPDATE of the anchor.

Nothing of this happens on SQLite.
"""

import django.db.models.deletion
from django.db import migrations, models

FUNCTION = "airlock_audit_purge"
SIGNATURE = f"{FUNCTION}(bigint, bigint)"
EVENT_TRIGGER_FUNCTION = "audit_event_append_only"
PURGE_TRIGGER = "audit_purge_append_only"

PURGE_FUNCTION = """
CREATE OR REPLACE FUNCTION {schema}.{function}(p_organization_id bigint, p_through bigint) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' AS $body$
DECLARE
    v_head bigint;
    v_anchor bigint;
    v_days integer;
    v_hold boolean;
    v_young bigint;
    v_checkpoint bigint;
    v_delivered bigint;
    v_hash text;
    v_deleted bigint;
BEGIN
    SELECT sequence, anchor_sequence INTO v_head, v_anchor
        FROM {head} WHERE organization_id = p_organization_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING
            MESSAGE = 'audit purge refused: organization ' || p_organization_id::text || ' has no chain';
    END IF;
    SELECT retention_days, legal_hold INTO v_days, v_hold FROM {settings}
        WHERE organization_id = p_organization_id FOR SHARE;
    IF v_days IS NULL OR v_days < 1 THEN
        RAISE EXCEPTION USING MESSAGE = 'audit purge refused: the organization keeps its events forever (no retention)';
    END IF;
    IF v_hold THEN
        RAISE EXCEPTION USING MESSAGE = 'audit purge refused: the organization is under legal hold';
    END IF;
    IF p_through <= v_anchor THEN
        RAISE EXCEPTION USING MESSAGE = 'audit purge refused: event #' || p_through::text
            || ' is not after the chain anchor #' || v_anchor::text;
    END IF;
    IF p_through >= v_head THEN
        RAISE EXCEPTION USING
            MESSAGE = 'audit purge refused: the chain''s last event #' || v_head::text || ' is always kept';
    END IF;
    SELECT min(sequence) INTO v_young FROM {events}
        WHERE organization_id = p_organization_id AND sequence > v_anchor AND sequence <= p_through
        AND occurred_at >= now() - make_interval(hours => v_days * 24);
    IF v_young IS NOT NULL THEN
        RAISE EXCEPTION USING MESSAGE = 'audit purge refused: event #' || v_young::text
            || ' is younger than the retention of ' || v_days::text || ' days';
    END IF;
    SELECT max(sequence) INTO v_checkpoint FROM {checkpoints} WHERE organization_id = p_organization_id;
    IF p_through >= v_checkpoint THEN
        RAISE EXCEPTION USING MESSAGE = 'audit purge refused: events from #' || v_checkpoint::text
            || ', the newest signed checkpoint''s event, on are kept';
    END IF;
    SELECT min(delivered_sequence) INTO v_delivered FROM {destinations} WHERE organization_id = p_organization_id;
    IF p_through > v_delivered THEN
        RAISE EXCEPTION USING MESSAGE = 'audit purge refused: events after #' || v_delivered::text
            || ' are not yet delivered to every SIEM destination';
    END IF;
    SELECT hash INTO v_hash FROM {events} WHERE organization_id = p_organization_id AND sequence = p_through;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING MESSAGE = 'audit purge refused: event #' || p_through::text || ' is missing';
    END IF;
    -- The anchor moves first: the append-only trigger lets through only events at or before it.
    UPDATE {head} SET anchor_sequence = p_through, anchor_hash = v_hash WHERE organization_id = p_organization_id;
    PERFORM set_config('airlock.audit_purge', 'on', true);
    DELETE FROM {events} WHERE organization_id = p_organization_id AND sequence > v_anchor AND sequence <= p_through;
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    PERFORM set_config('airlock.audit_purge', 'off', true);
    INSERT INTO {purges} (organization_id, from_sequence, to_sequence, anchor_hash, deleted, retention_days,
                          purged_at, database_user)
        VALUES (p_organization_id, v_anchor + 1, p_through, v_hash, v_deleted, v_days, now(), session_user);
    RETURN v_deleted;
END;
$body$
"""

EVENT_TRIGGER = """
CREATE OR REPLACE FUNCTION {schema}.{function}() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $body$
DECLARE
    head_anchor bigint;
    head_sequence bigint;
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('airlock.audit_purge', true) = 'on' THEN
        SELECT anchor_sequence, sequence INTO head_anchor, head_sequence
            FROM {head} WHERE organization_id = OLD.organization_id;
        IF head_anchor IS NOT NULL AND OLD.sequence <= head_anchor AND OLD.sequence < head_sequence THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION USING
            MESSAGE = 'audit purge refused: event #' || OLD.sequence::text || ' is not before the chain anchor',
            HINT = 'The purge moves the chain anchor first, then deletes the events up to it.';
    END IF;
    RAISE EXCEPTION USING
        MESSAGE = 'audit events are append-only: ' || TG_OP::text || ' on ' || TG_TABLE_NAME::text || ' is refused',
        HINT = 'Audit events are never updated or deleted; retention purges use their own privileged path.';
END;
$body$
"""

PURGE_REFUSE_ALL = """
CREATE OR REPLACE FUNCTION {schema}.{function}() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $body$
BEGIN
    RAISE EXCEPTION USING
        MESSAGE = 'audit purge records are append-only: ' || TG_OP::text || ' is refused',
        HINT = 'A purge''s record is never changed or removed.';
END;
$body$
"""


def _names(apps, schema_editor) -> dict[str, str]:
    quote = schema_editor.quote_name
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT current_schema()")
        schema = quote(cursor.fetchone()[0])
    tables = {
        "head": "AuditChainHead",
        "settings": "AuditSettings",
        "checkpoints": "AuditCheckpoint",
        "destinations": "AuditDestination",
        "events": "AuditEvent",
        "purges": "AuditPurge",
    }
    names = {key: f"{schema}.{quote(apps.get_model('audit', model)._meta.db_table)}" for key, model in tables.items()}
    return {"schema": schema, **names}


def create_purge_function(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    names = _names(apps, schema_editor)
    schema_editor.execute(EVENT_TRIGGER.format(function=EVENT_TRIGGER_FUNCTION, **names))
    schema_editor.execute(PURGE_FUNCTION.format(function=FUNCTION, **names))
    # Functions are executable by PUBLIC unless revoked; `audit grants` gives EXECUTE to the runtime role.
    schema_editor.execute(f"REVOKE ALL ON FUNCTION {names['schema']}.{SIGNATURE} FROM PUBLIC")
    schema_editor.execute(PURGE_REFUSE_ALL.format(function=PURGE_TRIGGER, **names))
    schema_editor.execute(
        f"CREATE TRIGGER {PURGE_TRIGGER} BEFORE UPDATE OR DELETE ON {names['purges']} "
        f"FOR EACH ROW EXECUTE FUNCTION {names['schema']}.{PURGE_TRIGGER}()"
    )


def drop_purge_function(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    names = _names(apps, schema_editor)
    schema_editor.execute(f"DROP TRIGGER IF EXISTS {PURGE_TRIGGER} ON {names['purges']}")
    schema_editor.execute(f"DROP FUNCTION IF EXISTS {names['schema']}.{PURGE_TRIGGER}()")
    schema_editor.execute(f"DROP FUNCTION IF EXISTS {names['schema']}.{SIGNATURE}")


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0007_destination_client_certificate"),
        ("organizations", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="AuditPurge",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("from_sequence", models.BigIntegerField()),
                ("to_sequence", models.BigIntegerField()),
                (
                    "anchor_hash",
                    models.CharField(
                        help_text="Hash of event #to_sequence, where the chain now starts.", max_length=64
                    ),
                ),
                ("deleted", models.BigIntegerField()),
                ("retention_days", models.PositiveIntegerField()),
                ("purged_at", models.DateTimeField()),
                (
                    "database_user",
                    models.CharField(help_text="The database session's user that called the purge.", max_length=100),
                ),
                (
                    "organization",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="audit_purges",
                        to="organizations.organization",
                    ),
                ),
            ],
            options={
                "ordering": ["organization_id", "to_sequence"],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("organization", "to_sequence"), name="audit_purge_unique_org_to_sequence"
                    )
                ],
            },
        ),
        migrations.RunPython(create_purge_function, drop_purge_function, elidable=False),
    ]
