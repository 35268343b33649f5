"""Request checks that hold for every view."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest


class RefuseNulInQueryMiddleware:
    """A query string holding a NUL character (`%00`) gets a 400 saying so, before any view sees it.

    No column stores NUL (PostgreSQL refuses it in text), so a filter carrying one could only fail in the
    database, as a 500, wherever a view passes query parameters on (the admin's list filters do).
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        for name, values in request.GET.lists():
            if "\x00" in name or any("\x00" in value for value in values):
                return HttpResponseBadRequest(
                    f"The query parameter {name.replace(chr(0), '%00')!r} holds a NUL character (%00): remove it.",
                    content_type="text/plain; charset=utf-8",
                )
        return self.get_response(request)
