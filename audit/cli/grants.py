"""`audit grants --role ROLE [--print]`: the rights of the role the services connect as (PostgreSQL).

Run it with the owner's credentials (the role that ran `migrate`), after every `migrate`. The runtime role may read
and write Airlock's tables, but on the audit log it may only append: no UPDATE, DELETE or TRUNCATE of events and
checkpoints, no UPDATE of a chain's anchor, and events leave only through `airlock_audit_purge` (migration 0008).
"""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction

from audit.models import (
    AuditChainHead,
    AuditCheckpoint,
    AuditEvent,
    AuditPendingEvent,
    AuditPurge,
    AuditRetentionFloor,
)
from audit.retention import PURGE_FUNCTION

HELP = (
    "Give ROLE, the role the services connect as, what Airlock needs on PostgreSQL and no way to change or delete "
    "audit events except the retention purge; run as the tables' owner after every migrate (--print shows the SQL)."
)


def register(parser: argparse.ArgumentParser) -> None:
    """Arguments of `audit grants`."""
    parser.add_argument("--role", required=True, help="the PostgreSQL role the web, worker and chainer connect as")
    parser.add_argument("--print", action="store_true", dest="print_only", help="print the statements; run nothing")


def runtime_grants(*, role: str, schema: str) -> list[str]:
    """The statements that give `role` the runtime rights: full DML on every table but the audit log's own."""
    quote = connection.ops.quote_name
    who, where = quote(role), quote(schema)
    events, checkpoints = quote(AuditEvent._meta.db_table), quote(AuditCheckpoint._meta.db_table)
    head, pending = quote(AuditChainHead._meta.db_table), quote(AuditPendingEvent._meta.db_table)
    purges, floor = quote(AuditPurge._meta.db_table), quote(AuditRetentionFloor._meta.db_table)
    return [
        f"GRANT USAGE ON SCHEMA {where} TO {who}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {where} TO {who}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {where} TO {who}",
        # A trigger the role could create would run as whoever writes the table: the purge function's owner too.
        f"REVOKE TRUNCATE, TRIGGER, REFERENCES ON ALL TABLES IN SCHEMA {where} FROM {who}",
        f"REVOKE UPDATE, DELETE, TRUNCATE, TRIGGER, REFERENCES ON {events}, {checkpoints} FROM {who}",
        # Chaining moves the head's sequence and hash (and locks the row); only the purge function moves the anchor.
        f"REVOKE UPDATE, DELETE, TRUNCATE ON {head} FROM {who}",
        f"GRANT UPDATE (sequence, hash) ON {head} TO {who}",
        # The chainer deletes pending rows as it chains them; nothing rewrites one.
        f"REVOKE UPDATE, TRUNCATE ON {pending} FROM {who}",
        # Only the purge function writes a purge record; only the owner sets the minimum retention.
        f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE, TRIGGER, REFERENCES ON {purges}, {floor} FROM {who}",
        f"GRANT EXECUTE ON FUNCTION {where}.{PURGE_FUNCTION}(bigint, bigint) TO {who}",
    ]


def _missing(role: str, schema: str) -> str | None:
    """What must exist before the grants (the role, the migrated tables), or None; the rest is checked after them."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
        if cursor.fetchone() is None:
            return f"No PostgreSQL role {role!r}; create it first, e.g. CREATE ROLE {role} LOGIN PASSWORD '...'."
        cursor.execute(
            "SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = %s", [schema, AuditEvent._meta.db_table]
        )
        if cursor.fetchone() is None:
            return "The audit tables do not exist in this database yet; run `python manage.py migrate` first."
    return None


_APPEND_ONLY = (AuditEvent, AuditCheckpoint, AuditPurge)
_OWNS = (
    "EXISTS (SELECT 1 FROM pg_tables t WHERE t.tableowner = r.rolname AND t.schemaname = current_schema() "
    "AND t.tablename = ANY(%s))"
)
_TRIGGERS = (
    "EXISTS (SELECT 1 FROM pg_tables t WHERE t.schemaname = current_schema() "
    "AND has_table_privilege(r.oid, format('%%I.%%I', t.schemaname, t.tablename), 'TRIGGER'))"
)


def _destructive_rights(cursor: Any, role: str) -> list[str]:
    """What `role` could use to change or remove audit records, directly or through any role it is a member of.

    Membership counts whether inherited or not (a member may `SET ROLE`): for each such role, superuser, CREATEROLE
    (it could grant itself the owner), owning an audit table, TRIGGER on any table (a trigger runs as whoever
    writes, the purge function's owner too), UPDATE/DELETE/TRUNCATE on events, checkpoints or purge records, INSERT
    of purge records, any write of the minimum retention, and UPDATE of a chain's anchor. Returned as phrases naming
    the right and the role.
    """
    quote = connection.ops.quote_name
    tables = [model._meta.db_table for model in _APPEND_ONLY]
    floor = AuditRetentionFloor._meta.db_table
    checks = [(table, right) for table in tables for right in ("UPDATE", "DELETE", "TRUNCATE")]
    checks.append((AuditPurge._meta.db_table, "INSERT"))
    checks += [(floor, right) for right in ("INSERT", "UPDATE", "DELETE", "TRUNCATE")]
    head = AuditChainHead._meta.db_table
    # INSERT and UPDATE may be granted on single columns, which has_table_privilege does not see.
    privileges = ", ".join(
        "has_any_column_privilege(r.oid, %s, %s)"
        if right in ("INSERT", "UPDATE")
        else "has_table_privilege(r.oid, %s, %s)"
        for _table, right in checks
    )  # placeholders only
    sql = (
        f"SELECT r.rolname, r.rolsuper, r.rolcreaterole, {_OWNS}, {_TRIGGERS}, {privileges}, "  # noqa: S608
        "has_column_privilege(r.oid, %s, 'anchor_sequence', 'UPDATE'), "
        "has_column_privilege(r.oid, %s, 'anchor_hash', 'UPDATE') "
        "FROM pg_roles r WHERE pg_has_role(%s, r.oid, 'MEMBER') ORDER BY r.rolname"
    )
    rights = [value for table, right in checks for value in (quote(table), right)]
    cursor.execute(sql, [[*tables, head, floor], *rights, quote(head), quote(head), role])
    labels = [
        "superuser (it can switch the append-only trigger off)",
        "CREATEROLE (it could grant itself the tables' owner)",
        "ownership of an audit table (it can drop the table's trigger: let another role own the tables)",
        "TRIGGER on a table",
    ]
    labels += [f"{right} on {table}" for table, right in checks]
    labels += [f"UPDATE of {head}.anchor_sequence", f"UPDATE of {head}.anchor_hash"]
    found = []
    for name, *held in cursor.fetchall():
        rights = [label for label, has in zip(labels, held, strict=True) if has]
        if held[0]:
            rights = rights[:1]  # a superuser holds everything else too
        if rights:
            found.append(", ".join(rights) + ("" if name == role else f" (through role {name!r})"))
    return found


def handle(command: BaseCommand, options: dict[str, Any]) -> None:
    """Check the role, then print or run the grants in one transaction."""
    if connection.vendor != "postgresql":
        raise CommandError("`audit grants` is for PostgreSQL; SQLite has no roles (the embedded default is one user).")
    role = options["role"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_schema()")
        schema = cursor.fetchone()[0]
    statements = runtime_grants(role=role, schema=schema)
    if options.get("print_only"):
        command.stdout.write(";\n".join(statements) + ";")
        return
    missing = _missing(role, schema)
    if missing:
        raise CommandError(missing)
    with transaction.atomic(), connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)
        # A REVOKE cannot take back what the role is (superuser, owner) or holds through PUBLIC or another role.
        kept = _destructive_rights(cursor, role)
        if kept:
            raise CommandError(
                f"Role {role!r} still has {'; '.join(kept)}. Use a plain role, or revoke that grant or membership "
                "(to PUBLIC or to a role it is a member of), then run this again. Nothing was changed."
            )
    command.stdout.write(
        f"{role}: may read and write Airlock's tables in schema {schema}; may only append audit events and "
        f"checkpoints; events leave only through {PURGE_FUNCTION}(). Run this again after every migrate."
    )
