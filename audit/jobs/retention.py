"""Celery tasks: retention."""

__all__: list[str] = []
