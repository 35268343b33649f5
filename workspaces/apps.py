from django.apps import AppConfig


class WorkspacesConfig(AppConfig):
    """The workspaces app."""

    name = "workspaces"
