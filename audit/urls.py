"""Audit pages: browse the log, one event, a session timeline."""

urlpatterns: list = []
