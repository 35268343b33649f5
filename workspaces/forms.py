"""The workspace template form of the settings pages; the service checks every value and names the field."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from workspaces.models import WorkspaceBackend, WorkspaceTemplate
from workspaces.services.templates import DESCRIPTION_MAX_CHARS, TEMPLATE_FIELD_ORDER


class WorkspaceTemplateForm(forms.Form):
    """Add or edit a template: what the agent chooses it by, where its commands run, within what limits."""

    name = forms.CharField(max_length=63, help_text="What the agent names it by, e.g. python-3-12.")
    description = forms.CharField(
        max_length=DESCRIPTION_MAX_CHARS,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="What the agent chooses by: the tools and languages inside, what it can and cannot reach.",
    )
    backend = forms.ChoiceField(choices=WorkspaceBackend.choices, initial=WorkspaceBackend.BUBBLEWRAP)
    command_timeout_seconds = forms.IntegerField(
        required=False, label="Command timeout (seconds)", help_text="Empty: the deployment's default."
    )
    output_cap_bytes = forms.IntegerField(
        required=False, label="Output kept per command (bytes)", help_text="Empty: the deployment's default."
    )
    memory_limit_mb = forms.IntegerField(
        required=False,
        label="Memory limit (MB)",
        help_text="Address space of each process of a command. Empty: no limit.",
    )
    is_enabled = forms.BooleanField(required=False, initial=True, label="Agents may start it")

    def __init__(self, *args: Any, template: WorkspaceTemplate | None = None, **kwargs: Any) -> None:
        if template is not None and not args and "data" not in kwargs:
            kwargs["initial"] = {field: getattr(template, field) for field in TEMPLATE_FIELD_ORDER}
        super().__init__(*args, **kwargs)
        self.template = template

    def values(self) -> dict[str, Any]:
        """Every field's cleaned value, for the create service."""
        return {field: self.cleaned_data[field] for field in TEMPLATE_FIELD_ORDER}

    def changes(self) -> dict[str, Any]:
        """Only what differs from the template being edited, for the update service."""
        return {field: value for field, value in self.values().items() if getattr(self.template, field) != value}

    def show_service_errors(self, error: ValidationError) -> None:
        """A service's refusal next to the fields it names; anything else above the form."""
        if not hasattr(error, "error_dict"):
            self.add_error(None, error)
            return
        for field, messages in error.message_dict.items():
            self.add_error(field if field in self.fields else None, messages)
