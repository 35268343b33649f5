"""Workspace template settings pages."""

from django.urls import path

from workspaces import views

app_name = "workspaces"

urlpatterns = [
    path("orgs/<slug:slug>/settings/templates/", views.template_list, name="template-list"),
    path("orgs/<slug:slug>/settings/templates/<int:template_id>/edit/", views.template_edit, name="template-edit"),
    path(
        "orgs/<slug:slug>/settings/templates/<int:template_id>/delete/", views.template_remove, name="template-delete"
    ),
]
