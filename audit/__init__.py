"""The audit log. `audit.record(...)` is the only way to write an event."""

from __future__ import annotations

from typing import Any


def record(**kwargs: Any) -> Any:
    """Append an audit event in the current transaction (see `audit.services.record`)."""
    from audit.services import record as _record

    return _record(**kwargs)
