"""Celery tasks: forwarding."""

__all__: list[str] = []
