from django.apps import AppConfig


class OrganizationsConfig(AppConfig):
    """Organizations, memberships and roles."""

    name = "organizations"
