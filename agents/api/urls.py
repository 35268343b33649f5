"""Agents API routes."""

urlpatterns: list = []
