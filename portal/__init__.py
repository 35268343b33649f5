"""Wiring: settings, routing, the Celery app, health checks and the pages' shell."""

from portal.celery import app as celery_app

__all__ = ["celery_app"]
