"""The operator's minimum retention: one row the services' role may only read, and a purge function that refuses
a purge under it.

`audit grants` leaves the runtime role SELECT only on `audit_auditretentionfloor`, so an application whose
credentials leak still cannot purge events younger than the floor the operator set with the owner's credentials
(`manage.py audit retention_floor --days N`), whatever it writes into an organization's settings. The function is
0008's, with one more rule after the legal hold; nothing of this happens on SQLite.
"""

from importlib import import_module

from django.db import migrations, models

PURGE_0008 = import_module("audit.migrations.0008_purge_function")

DECLARE = "    v_days integer;\n"
RULE_AFTER = """    IF v_hold THEN
        RAISE EXCEPTION USING MESSAGE = 'audit purge refused: the organization is under legal hold';
    END IF;
"""
FLOOR_RULE = """    -- Held until the purge commits: the operator setting a minimum meanwhile waits, then applies to what is left.
    LOCK TABLE {floor} IN SHARE MODE;
    SELECT minimum_days INTO v_floor FROM {floor} WHERE id = 1;
    IF v_floor IS NOT NULL AND v_days < v_floor THEN
        RAISE EXCEPTION USING MESSAGE = 'audit purge refused: the retention of ' || v_days::text
            || ' days is under the operator''s minimum of ' || v_floor::text || ' days';
    END IF;
"""


def _with_floor(sql: str) -> str:
    assert DECLARE in sql and RULE_AFTER in sql, "0008's purge function changed: write the rule in again"
    sql = sql.replace(DECLARE, DECLARE + "    v_floor integer;\n", 1)
    return sql.replace(RULE_AFTER, RULE_AFTER + FLOOR_RULE, 1)


def _names(apps, schema_editor) -> dict[str, str]:
    names = PURGE_0008._names(apps, schema_editor)
    table = apps.get_model("audit", "AuditRetentionFloor")._meta.db_table
    return {**names, "floor": f"{names['schema']}.{schema_editor.quote_name(table)}"}


def add_floor_rule(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    names = _names(apps, schema_editor)
    schema_editor.execute(_with_floor(PURGE_0008.PURGE_FUNCTION).format(function=PURGE_0008.FUNCTION, **names))


def remove_floor_rule(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    names = _names(apps, schema_editor)
    schema_editor.execute(PURGE_0008.PURGE_FUNCTION.format(function=PURGE_0008.FUNCTION, **names))


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0008_purge_function"),
    ]

    operations = [
        migrations.CreateModel(
            name="AuditRetentionFloor",
            fields=[
                ("id", models.PositiveSmallIntegerField(default=1, primary_key=True, serialize=False)),
                ("minimum_days", models.PositiveIntegerField()),
                ("set_at", models.DateTimeField()),
                (
                    "set_by",
                    models.CharField(help_text="The database user (or operator) that set it.", max_length=100),
                ),
            ],
            options={
                "constraints": [
                    models.CheckConstraint(condition=models.Q(("id", 1)), name="audit_retention_floor_one_row")
                ],
            },
        ),
        migrations.RunPython(add_floor_rule, remove_floor_rule, elidable=False),
    ]
