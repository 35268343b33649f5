"""JSON Lines: one JSON object per event with every AU-3 field, the chain links and the product.

Times are UTC with microseconds and a `Z`; `data` is the stored JSON as is. This is the format to re-verify
the hash chain from outside Airlock (`audit.chain.event_document` of a line's fields gives the hashed form).
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings

from audit.exporters.raw import RawJSON
from audit.exporters.stream import COLUMNS
from audit.exporters.timefmt import utc_text

EXTENSION = "jsonl"
# `render` takes `data` as RawJSON text too (PostgreSQL's own JSON text, passed through unparsed).
RAW_DATA = True
CONTENT_TYPE = "application/x-ndjson; charset=utf-8"

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str, check_circular=False)
(ID, ORG, SEQ, AT, ACTION, OUTCOME, ERROR, ACTOR_TYPE, ACTOR_ID, ACTOR_DISPLAY, AUTH, IP, AGENT, REQUEST) = range(14)
(TARGET_TYPE, TARGET_ID, TARGET_DISPLAY, SESSION, WORKSPACE, MODEL_CALL, DATA, PREV, HASH) = range(14, 23)
# A JSON string literal of a str (C implementation), as the encoder above writes it.
_string = json.encoder.encode_basestring


def header() -> str:
    """Nothing precedes the first line."""
    return ""


def document(row: dict[str, Any], version: str | None = None) -> dict[str, Any]:
    """The exported object of one event row (as read with `.values()`, plus `organization_slug`)."""
    return {
        "id": str(row["id"]),
        "organization": {"id": row["organization_id"], "slug": row["organization_slug"]},
        "sequence": row["sequence"],
        "occurred_at": utc_text(row["occurred_at"]),
        "action": row["action"],
        "outcome": row["outcome"],
        "error": row["error"],
        "actor": {"type": row["actor_type"], "id": row["actor_id"], "display": row["actor_display"]},
        "auth_method": row["auth_method"],
        "source_ip": row["source_ip"],
        "user_agent": row["user_agent"],
        "request_id": row["request_id"],
        "target": {"type": row["target_type"], "id": row["target_id"], "display": row["target_display"]},
        "session_id": row["session_id"],
        "workspace_id": row["workspace_id"],
        "model_call_id": row["model_call_id"],
        "data": row["data"],
        "prev_hash": row["prev_hash"],
        "hash": row["hash"],
        "product": {"name": "Airlock", "version": version or settings.AIRLOCK_VERSION},
    }


def _json(value: Any) -> str:
    return value if isinstance(value, RawJSON) else _ENCODER.encode(value)


def render(row: dict[str, Any], version: str | None = None) -> str:
    """One event as a JSON line (UTF-8 text, no spaces, ending in a newline); `version` defaults to the setting."""
    values = tuple(row[name] for name in COLUMNS)
    return render_values(values, row["organization_slug"], version or settings.AIRLOCK_VERSION)


def render_values(v: tuple, organization_slug: str, version: str) -> str:
    """`render` of a row given as its value tuple (in `COLUMNS` order): the stream's fast path.

    The same object as `document(row)`, written with a template and C string escaping rather than by
    building nested dicts and encoding them: a few times faster, which the export benchmark needs.
    """
    s = _string
    return (
        f'{{"id":{s(str(v[ID]))},"organization":{{"id":{int(v[ORG])},"slug":{s(organization_slug)}}},'
        f'"sequence":{int(v[SEQ])},"occurred_at":"{utc_text(v[AT])}","action":{s(v[ACTION])},'
        f'"outcome":{s(v[OUTCOME])},"error":{s(v[ERROR])},'
        f'"actor":{{"type":{s(v[ACTOR_TYPE])},"id":{s(v[ACTOR_ID])},"display":{s(v[ACTOR_DISPLAY])}}},'
        f'"auth_method":{s(v[AUTH])},"source_ip":{s(v[IP])},"user_agent":{s(v[AGENT])},'
        f'"request_id":{s(v[REQUEST])},'
        f'"target":{{"type":{s(v[TARGET_TYPE])},"id":{s(v[TARGET_ID])},"display":{s(v[TARGET_DISPLAY])}}},'
        f'"session_id":{s(v[SESSION])},"workspace_id":{s(v[WORKSPACE])},"model_call_id":{s(v[MODEL_CALL])},'
        f'"data":{_json(v[DATA])},"prev_hash":{s(v[PREV])},"hash":{s(v[HASH])},'
        f'"product":{{"name":"Airlock","version":{s(version)}}}}}\n'
    )
