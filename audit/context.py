"""Where an audited action came from (request id, source IP, user agent), carried in a context variable."""

from __future__ import annotations

import contextvars
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from audit.chain import clean_text


@dataclass(frozen=True)
class AuditContext:
    """Request-level facts that every event written during the request carries."""

    request_id: str = ""
    source_ip: str = ""
    user_agent: str = ""
    auth_method: str = ""


_current: contextvars.ContextVar[AuditContext] = contextvars.ContextVar("airlock_audit_context", default=AuditContext())  # noqa: B039 - frozen


def current() -> AuditContext:
    """The context of the request or task being served."""
    return _current.get()


# Each field's column length; values are cleaned and cut once here, not on every event written.
FIELD_LIMITS = {"request_id": 64, "source_ip": 64, "user_agent": 500, "auth_method": 32}


@contextmanager
def bound(**fields: str) -> Iterator[AuditContext]:
    """Set context fields for the duration of a block (a request, a websocket, a task).

    Each value is made storable (`audit.chain.clean_text`) and cut to its column's length.
    """
    cleaned = {name: clean_text(str(value))[: FIELD_LIMITS.get(name)] for name, value in fields.items()}
    context = replace(current(), **cleaned)
    if not context.request_id:
        context = replace(context, request_id=uuid.uuid4().hex)
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)
