"""CSV (RFC 4180): a header row, one row per event, `data` as a JSON cell, lines ending in CRLF.

Cells that a spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@`, a tab or a carriage
return) are prefixed with a single quote (OWASP "CSV injection"). Such a cell no longer holds the stored
value byte for byte, so re-verify the hash chain from a JSON Lines export, not from CSV.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from audit.chain import HASHED_FIELDS, canonical_json, format_time

EXTENSION = "csv"
CONTENT_TYPE = "text/csv; charset=utf-8"

# The hashed fields in their hashed order (the organization's slug beside its id), the chain links, the product.
COLUMNS = (
    "id",
    "organization_id",
    "organization_slug",
    *(name for name in HASHED_FIELDS if name not in ("id", "organization_id")),
    "prev_hash",
    "hash",
    "product_name",
    "product_version",
)

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NEEDS_QUOTES = (",", '"', "\r", "\n")


def cell(value: object) -> str:
    """One field: guarded against formula injection, quoted (RFC 4180) when it holds , " CR or LF."""
    text = "" if value is None else str(value)
    if text.startswith(_FORMULA_START):
        text = "'" + text
    if any(char in text for char in _NEEDS_QUOTES):
        return '"' + text.replace('"', '""') + '"'
    return text


def header() -> str:
    """The header row."""
    return ",".join(COLUMNS) + "\r\n"


def render(row: dict[str, Any], version: str | None = None) -> str:
    """One event as a CSV record ending in CRLF; `version` (Airlock's) defaults to the setting."""
    values = (
        row["id"],
        row["organization_id"],
        row["organization_slug"],
        row["sequence"],
        format_time(row["occurred_at"]),
        row["action"],
        row["outcome"],
        row["error"],
        row["actor_type"],
        row["actor_id"],
        row["actor_display"],
        row["auth_method"],
        row["source_ip"],
        row["user_agent"],
        row["request_id"],
        row["target_type"],
        row["target_id"],
        row["target_display"],
        row["session_id"],
        row["workspace_id"],
        row["model_call_id"],
        canonical_json(row["data"]),
        row["prev_hash"],
        row["hash"],
        "Airlock",
        version or settings.AIRLOCK_VERSION,
    )
    return ",".join(map(cell, values)) + "\r\n"
