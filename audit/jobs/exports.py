"""Celery tasks: exports."""

__all__: list[str] = []
