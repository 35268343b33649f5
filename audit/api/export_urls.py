"""Audit API routes: exports."""

urlpatterns: list = []
