"""The hash chain: canonical JSON of an event and the hash that links it to the one before."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

GENESIS_HASH = "0" * 64

# The fields that make up an event's canonical form, in the order they are documented.
HASHED_FIELDS = (
    "id",
    "organization_id",
    "sequence",
    "occurred_at",
    "action",
    "outcome",
    "error",
    "actor_type",
    "actor_id",
    "actor_display",
    "auth_method",
    "source_ip",
    "user_agent",
    "request_id",
    "target_type",
    "target_id",
    "target_display",
    "session_id",
    "workspace_id",
    "data",
)


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces, so the same value always gives the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def normalize(value: Any) -> Any:
    """What a JSON column gives back for a value: store this so that a re-read hashes the same."""
    return json.loads(canonical_json(value))


def format_time(moment: dt.datetime) -> str:
    """UTC with microseconds, the form that is hashed."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_document(event: Any) -> dict[str, Any]:
    """The hashed fields of an event (a model instance or anything with those attributes)."""
    document = {name: getattr(event, name) for name in HASHED_FIELDS}
    document["id"] = str(document["id"])
    document["occurred_at"] = format_time(document["occurred_at"])
    return document


def chain_hash(prev_hash: str, document: dict[str, Any]) -> str:
    """sha256(prev_hash || canonical_json(document)) as hex."""
    digest = hashlib.sha256()
    digest.update(prev_hash.encode("ascii"))
    digest.update(canonical_json(document).encode("utf-8"))
    return digest.hexdigest()
