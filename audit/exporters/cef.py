"""ArcSight Common Event Format: `CEF:0|Airlock|Airlock|<version>|<action>|<action>|<severity>|<extension>`.

Header fields escape `\\` and `|`; extension values escape `\\`, `=` and line breaks (`\\n`, `\\r`), as the
CEF specification requires. `rt` is the event time in epoch milliseconds, `externalId` the sequence number.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.conf import settings

EXTENSION = "cef"
CONTENT_TYPE = "text/plain; charset=utf-8"

# CEF severity 0-10 by outcome.
SEVERITY = {"success": 3, "failure": 6, "denied": 8}

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MILLISECOND = dt.timedelta(milliseconds=1)


def escape_header(value: object) -> str:
    """A header field: backslash and pipe escaped, line breaks flattened to spaces."""
    text = str(value).replace("\\", "\\\\").replace("|", "\\|")
    return text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


def escape_value(value: object) -> str:
    """An extension value: backslash, equals sign and line breaks escaped."""
    text = str(value).replace("\\", "\\\\").replace("=", "\\=")
    return text.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\r")


def header() -> str:
    """Nothing precedes the first line."""
    return ""


def render(row: dict[str, Any], version: str | None = None) -> str:
    """One event as a CEF line; `version` (Airlock's) defaults to the setting."""
    action = escape_header(row["action"])
    head = (
        f"CEF:0|Airlock|Airlock|{escape_header(version or settings.AIRLOCK_VERSION)}|{action}|{action}|"
        f"{SEVERITY.get(row['outcome'], 5)}|"
    )
    pairs = [
        ("rt", (row["occurred_at"] - _EPOCH) // _MILLISECOND),
        ("act", row["action"]),
        ("outcome", row["outcome"]),
        ("externalId", row["sequence"]),
        ("suser", row["actor_display"]),
        ("suid", row["actor_id"]),
        ("src", row["source_ip"]),
        ("requestClientApplication", row["user_agent"]),
        ("msg", row["error"]),
    ]
    custom = (
        ("sessionId", row["session_id"]),
        ("requestId", row["request_id"]),
        ("eventId", row["id"]),
        ("workspaceId", row["workspace_id"]),
        ("organization", row["organization_slug"]),
        ("hash", row["hash"]),
    )
    for number, (label, value) in enumerate(custom, start=1):
        if value not in ("", None):
            pairs += [(f"cs{number}Label", label), (f"cs{number}", value)]
    extension = " ".join(f"{key}={escape_value(value)}" for key, value in pairs if value not in ("", None))
    return head + extension + "\n"
