"""Chat pages."""

from django.urls import path

from agents import views

app_name = "agents"

urlpatterns = [
    path("", views.home, name="home"),
    path("orgs/<slug:slug>/chat/", views.chat, name="chat"),
    path("orgs/<slug:slug>/chat/<uuid:session_id>/", views.chat, name="chat-session"),
]
