"""Providers and models API routes."""

urlpatterns: list = []
