"""A marker for JSON text passed through an export unparsed."""

from __future__ import annotations


class RawJSON(str):
    """JSON text of a value, passed through unparsed (PostgreSQL's jsonb output: valid JSON, with spaces)."""

    __slots__ = ()
