"""Provider and model settings pages."""

from django.urls import path

from providers import views

app_name = "providers"

urlpatterns = [
    path("orgs/<slug:slug>/settings/providers/", views.provider_list, name="provider-list"),
    path("orgs/<slug:slug>/settings/providers/<int:provider_id>/edit/", views.provider_edit, name="provider-edit"),
    path(
        "orgs/<slug:slug>/settings/providers/<int:provider_id>/delete/", views.provider_delete, name="provider-delete"
    ),
    path("orgs/<slug:slug>/settings/providers/<int:provider_id>/test/", views.provider_test, name="provider-test"),
    path("orgs/<slug:slug>/settings/models/", views.model_list, name="model-list"),
    path("orgs/<slug:slug>/settings/models/<int:model_id>/edit/", views.model_edit, name="model-edit"),
    path("orgs/<slug:slug>/settings/models/<int:model_id>/delete/", views.model_delete, name="model-delete"),
    path("orgs/<slug:slug>/settings/models/<int:model_id>/default/", views.model_default, name="model-default"),
    path("orgs/<slug:slug>/settings/models/<int:model_id>/access/", views.model_access, name="model-access"),
]
