"""Bind each HTTP request's origin to the audit context."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from audit.context import bound


class AuditContextMiddleware:
    """Give every request an id and remember its source IP and user agent for audit events."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = request.headers.get("X-Request-Id", "")[:64] or uuid.uuid4().hex
        auth_method = "session" if request.COOKIES else ""
        with bound(
            request_id=request_id,
            source_ip=request.META.get("REMOTE_ADDR", "") or "",
            user_agent=request.headers.get("User-Agent", "")[:500],
            auth_method=auth_method,
        ):
            response = self.get_response(request)
        response["X-Request-Id"] = request_id
        return response
