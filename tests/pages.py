"""Helpers for tests of server-rendered pages: a logged-in client, a page's text, one form field's block."""

from __future__ import annotations

from typing import Any

from django.test import Client


def logged_in_client(user: Any) -> Client:
    """A test client signed in as the user (no password round trip)."""
    client = Client()
    client.force_login(user)
    return client


def page_text(response: Any) -> str:
    """The response body as text."""
    return response.content.decode()


def field_block(html: str, field_id: str) -> str:
    """The HTML of one form field's block (label, input, errors, help), to assert an error sits next to it."""
    start = html.index(f'for="{field_id}"')
    end = html.find('<div class="field', start)
    return html[start : end if end != -1 else len(html)]
