"""The hash chain: canonical JSON of an event and the hash that links it to the one before.

The rule, stable for every stored event: `hash = sha256(prev_hash || canonical_json(event_document(event)))`.
`audit.services.record` writes with it and `audit.verify.verify_chain` checks with it; nothing else hashes.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import math
from collections.abc import Mapping
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
    "model_call_id",
    "data",
)

# Python writes floats from 1e16 up in exponent form ("1e+16"); PostgreSQL's jsonb gives them back as
# plain integers ("10000000000000000"), so such floats are stored as the integers they denote.
_EXPONENT_FLOAT = 1e16


# Built once: verification encodes a document per event. check_circular only changes which error a
# self-containing value raises (RecursionError instead of ValueError); the text is the same.
_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str, check_circular=False
)


# The same text, refusing what `normalize` would rewrite on the way to the database (NaN and infinities).
_STRICT_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str, check_circular=False, allow_nan=False
)


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces, so the same value always gives the same text."""
    return _ENCODER.encode(value)


def clean_text(text: str) -> str:
    """A string every database can store: NUL and unpaired surrogates become U+FFFD."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = "".join("\ufffd" if 0xD800 <= ord(char) <= 0xDFFF else char for char in text)
    return text


def _settle(value: Any) -> Any:
    """Rewrite parsed JSON into the form SQLite and PostgreSQL both give back unchanged."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0:
            return 0.0  # jsonb has no negative zero
        if abs(value) >= _EXPONENT_FLOAT:
            return int(decimal.Decimal(repr(value)))
        return value
    if isinstance(value, list):
        return [_settle(item) for item in value]
    if isinstance(value, dict):
        return {clean_text(key): _settle(item) for key, item in value.items()}
    return value


def normalize(value: Any) -> Any:
    """What a JSON column gives back for a value: store this so that a re-read hashes the same.

    Values JSON has no type for (datetime, UUID, Decimal, ...) become their `str()`; non-finite floats
    become strings too; NUL characters become U+FFFD (PostgreSQL cannot store them).
    """
    return _settle(json.loads(canonical_json(value)))


def storable_json(value: Any) -> str | None:
    """The canonical JSON of a value when PostgreSQL stores it unchanged as `normalize(value)`, else None.

    None for what `normalize` rewrites into another value: non-finite floats, NUL characters and unpaired
    surrogates (and for what it cannot encode at all, which `normalize` then reports). Floats from 1e16 up and
    negative zero need no rewriting there: jsonb stores them as the numbers `normalize` would give.
    """
    try:
        text = _STRICT_ENCODER.encode(value)
    except (ValueError, TypeError):
        return None
    if "\\u0000" in text:
        return None
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return None
    return text


# PostgreSQL's to_char() pattern for `format_time`'s text, for readers that let the database format the time.
PG_TIME_FORMAT = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'


def format_time(moment: dt.datetime) -> str:
    """UTC with microseconds, the form that is hashed."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_document(event: Any) -> dict[str, Any]:
    """The hashed fields of an event, given as a model instance, a mapping or a tuple of column values.

    A tuple holds the values in HASHED_FIELDS order (trailing extra values are ignored); anything else
    that is not a mapping is read by attribute, like a model instance. `occurred_at` is a datetime, or text
    already in `format_time`'s form (the chainer has PostgreSQL format it with PG_TIME_FORMAT).
    """
    if isinstance(event, tuple):
        if len(event) < len(HASHED_FIELDS):
            raise ValueError(f"An event row needs {len(HASHED_FIELDS)} values in HASHED_FIELDS order, got {len(event)}")
        document = dict(zip(HASHED_FIELDS, event, strict=False))
    elif isinstance(event, Mapping):
        document = {name: event[name] for name in HASHED_FIELDS}
    else:
        document = {name: getattr(event, name) for name in HASHED_FIELDS}
    document["id"] = str(document["id"])
    occurred_at = document["occurred_at"]
    document["occurred_at"] = occurred_at if isinstance(occurred_at, str) else format_time(occurred_at)
    return document


def chain_hash(prev_hash: str, document: dict[str, Any]) -> str:
    """sha256(prev_hash || canonical_json(document)) as hex."""
    digest = hashlib.sha256()
    # A real prev_hash is hex, so UTF-8 and ASCII give the same bytes; UTF-8 also takes a tampered one.
    digest.update(prev_hash.encode("utf-8", "surrogatepass"))
    digest.update(canonical_json(document).encode("utf-8"))
    return digest.hexdigest()
