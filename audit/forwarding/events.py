"""The JSON form of an event that every destination receives: the export's JSON Lines object.

`audit.exporters.jsonl.document` is the single definition of that form (every AU-3 field, the chain links
`prev_hash` / `hash`, the organization's id and slug, the product), so a forwarded event and an exported
one are the same object.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from audit.exporters.jsonl import document as jsonl_document
from audit.exporters.stream import COLUMNS


def event_as_json(row: Any, *, organization_slug: str = "") -> dict[str, Any]:
    """One event (a model instance or a `.values()` row) as its JSON Lines object.

    Receivers de-duplicate by `id` (and may order or check gaps by `sequence`); with `prev_hash` and `hash`
    they can re-verify the chain.
    """
    if isinstance(row, Mapping):
        values = dict(row)
    else:
        values = {name: getattr(row, name) for name in COLUMNS}
    values.setdefault("organization_slug", organization_slug)
    return jsonl_document(values)
