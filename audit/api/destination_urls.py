"""Audit API routes: destinations."""

urlpatterns: list = []
