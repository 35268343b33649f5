from django.apps import AppConfig


class AuditConfig(AppConfig):
    """The audit app."""

    name = "audit"

    def ready(self) -> None:
        """Turn sign-in, sign-out, failed sign-in, MFA and SSO signals into audit events."""
        from audit.auth_events import connect_signals

        connect_signals()
