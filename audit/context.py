"""Where an audited action came from (request id, source IP, user agent), carried in a context variable."""

from __future__ import annotations

import contextvars
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace


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


@contextmanager
def bound(**fields: str) -> Iterator[AuditContext]:
    """Set context fields for the duration of a block (a request, a websocket, a task)."""
    context = replace(current(), **fields)
    if not context.request_id:
        context = replace(context, request_id=uuid.uuid4().hex)
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)
