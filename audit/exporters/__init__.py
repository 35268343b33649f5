"""Exports of the audit log: one formatter module per format, and the constant-memory event stream.

A formatter module has `EXTENSION`, `CONTENT_TYPE`, `header() -> str` and `render(row, version=None) -> str`, a
pure function of one event row (the columns as `.values()` reads them, plus `organization_slug`). A formatter
may also offer `render_values(values, organization_slug, version)` over the row's value tuple (in `COLUMNS`
order), which the stream then uses instead of building a dict per row, and declare `RAW_DATA = True` when
it takes `data` as `RawJSON` text (PostgreSQL's own, unparsed).
"""

from __future__ import annotations

from types import ModuleType

from audit.exporters import cef, csv, jsonl, ocsf
from audit.exporters.raw import RawJSON
from audit.exporters.stream import (
    COLUMNS,
    PAGE_SIZE,
    RENDER_ROWS,
    ExportStats,
    as_row,
    iter_event_rows,
    iter_export_bytes,
    iter_value_pages,
)

FORMATS: dict[str, ModuleType] = {"jsonl": jsonl, "csv": csv, "ocsf": ocsf, "cef": cef}

__all__ = [
    "COLUMNS",
    "FORMATS",
    "PAGE_SIZE",
    "RENDER_ROWS",
    "RawJSON",
    "ExportStats",
    "as_row",
    "formatter",
    "iter_value_pages",
    "iter_event_rows",
    "iter_export_bytes",
]


def formatter(name: str) -> ModuleType:
    """The formatter module of a format name; ValueError naming the formats for an unknown one."""
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"Unknown export format {name!r}: use one of {', '.join(FORMATS)}.") from None
