from django.apps import AppConfig


class ProvidersConfig(AppConfig):
    """The providers app."""

    name = "providers"
