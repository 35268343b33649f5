"""Audit API routes: events."""

urlpatterns: list = []
