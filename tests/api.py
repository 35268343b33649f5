"""The REST API client the tests use."""

from __future__ import annotations

from typing import Any

from rest_framework.test import APIClient


def api(user: Any = None) -> APIClient:
    """An API client signed in as `user` (anonymous without one)."""
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client
