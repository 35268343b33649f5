"""Audit pages: browse the log, one event, a session timeline, the audit settings."""

from django.urls import path

from audit import views

app_name = "audit"

urlpatterns = [
    path("orgs/<slug:slug>/audit/", views.browse, name="browse"),
    path("orgs/<slug:slug>/audit/events/<uuid:event_id>/", views.event_detail, name="event"),
    path("orgs/<slug:slug>/audit/sessions/<str:session_id>/", views.session_detail, name="session"),
    path("orgs/<slug:slug>/audit/settings/", views.settings_page, name="settings"),
]
