"""API-wide input rules: JSON bodies every database can store, and pages of a bounded size.

Kept apart from `portal.api`, which imports `rest_framework.views`: DRF reads its parser and pagination settings
while that module loads, so the classes named there must live in a module that does not import it.
"""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions, serializers
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.parsers import JSONParser
from rest_framework.request import Request

from portal.text import encodes_as_utf8


class BoundedLimitOffsetPagination(LimitOffsetPagination):
    """Limit/offset pages (`?limit=&offset=`) of at most 500 rows, at offsets every database can take.

    A larger limit gives the largest page and a larger offset an empty one, where both would otherwise reach
    the database as integers it refuses.
    """

    max_limit = 500
    max_offset = 10**15

    def get_offset(self, request: Request) -> int:
        """The requested offset, capped."""
        return min(super().get_offset(request), self.max_offset)


class StrictJSONParser(JSONParser):
    """JSON request bodies, refusing text no database stores: unpaired surrogates (`"\\ud800"`) and NUL.

    JSON may spell them as escapes, but PostgreSQL refuses both, SQLite would keep text that cannot be encoded
    back, and an error echoing them could not be rendered: a 400 says which field to fix instead.
    """

    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict[str, Any] | None = None) -> Any:
        """The parsed body, or ParseError naming the first field whose text is not storable."""
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise exceptions.ParseError("The JSON is nested too deeply: send a flat object.") from None
        where = _unstorable_text(data, "")
        if where is not None:
            raise exceptions.ParseError(
                f"{where or 'The body'} holds a NUL character or an unpaired surrogate (\\ud800 to \\udfff): "
                "send valid Unicode text."
            )
        return data


def _unstorable_text(value: Any, where: str) -> str | None:
    """The path of the first string (or key) with NUL or an unpaired surrogate in a parsed JSON value, else None."""
    if isinstance(value, str):
        return where if "\x00" in value or not encodes_as_utf8(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            if "\x00" in key or not encodes_as_utf8(key):
                return where or "A key"
            found = _unstorable_text(item, path)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _unstorable_text(item, f"{where}[{index}]")
            if found is not None:
                return found
    return None


class BoundedJSONField(serializers.JSONField):
    """A JSON field that answers 400, not 500, to JSON text nested too deeply to parse (a form-encoded body's
    field is parsed here, not by `StrictJSONParser`)."""

    def to_internal_value(self, data: Any) -> Any:
        """The parsed value; ValidationError for nesting Python cannot parse."""
        try:
            return super().to_internal_value(data)
        except RecursionError:
            raise serializers.ValidationError("The JSON is nested too deeply: send a flat object.") from None
