"""Forms of the audit settings page: parse what an owner typed; the services decide and record the change."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.forms.boundfield import BoundWidget

from audit.models import AuditSettings, ContentPolicy
from audit.policy import MAX_PATTERN_LENGTH, compile_redaction_pattern
from audit.retention import MAX_RETENTION_DAYS

# One line each, shown next to the radio buttons (and to auditors as the current policy's meaning).
CONTENT_POLICY_HELP: dict[str, str] = {
    ContentPolicy.FULL: "Prompts, answers and command output are kept as written; known secrets are masked.",
    ContentPolicy.REDACTED: "As full, and every match of the redaction patterns below becomes [REDACTED:pattern].",
    ContentPolicy.DIGEST: (
        "Prompts, answers and command output are kept only as sha256 and length; commands stay readable."
    ),
}
CONTENT_POLICY_TITLES: dict[str, str] = {
    ContentPolicy.FULL: "Full text",
    ContentPolicy.REDACTED: "Redacted",
    ContentPolicy.DIGEST: "Digest only",
}


def apply_service_errors(form: forms.Form, error: ValidationError) -> None:
    """Show a service's ValidationError next to the fields it names; anything else above the form."""
    if not hasattr(error, "error_dict"):
        form.add_error(None, error)
        return
    for field, messages in error.message_dict.items():
        if field in form.fields:
            form.add_error(field, messages)
        else:
            form.add_error(None, [f"{field}: {message}" for message in messages])


def parse_redaction_patterns(text: str) -> list[str]:
    """One regular expression per non-blank line; ValidationError naming the first line that is not one."""
    patterns = []
    # Lines end at a newline only: splitlines() would also cut a pattern at U+2028 and other separators.
    for number, line in enumerate(text.replace("\r\n", "\n").split("\n"), start=1):
        pattern = line.strip()
        if not pattern:
            continue
        if len(pattern) > MAX_PATTERN_LENGTH:
            raise ValidationError(f"Line {number}: a pattern may have at most {MAX_PATTERN_LENGTH} characters.")
        try:
            compile_redaction_pattern(pattern)
        except ValueError as exc:
            raise ValidationError(f"Line {number}: {exc}.") from None
        patterns.append(pattern)
    return patterns


class ContentPolicyForm(forms.Form):
    """How much text the organization's audit events keep, and the patterns the redacted policy masks."""

    saved_message = "Saved the content policy."

    content_policy = forms.ChoiceField(
        label="Content policy",
        choices=[(value, CONTENT_POLICY_TITLES[value]) for value in ContentPolicy.values],
        widget=forms.RadioSelect,
    )
    redaction_patterns = forms.CharField(
        label="Redaction patterns",
        required=False,
        widget=forms.Textarea(attrs={"rows": 5, "spellcheck": "false"}),
        help_text="One regular expression per line (Python syntax), e.g. PATIENT-\\d+. Used by the redacted policy.",
    )

    def __init__(self, *args: Any, current: AuditSettings, **kwargs: Any) -> None:
        kwargs.setdefault(
            "initial",
            {
                "content_policy": current.content_policy,
                "redaction_patterns": "\n".join(current.redaction_patterns or []),
            },
        )
        super().__init__(*args, **kwargs)
        self.current = current

    def clean_redaction_patterns(self) -> list[str]:
        """The non-blank lines, each a valid regular expression."""
        return parse_redaction_patterns(self.cleaned_data.get("redaction_patterns") or "")

    @staticmethod
    def state(settings_row: AuditSettings) -> object:
        """What this form edits, to tell whether a save changed anything."""
        return settings_row.content_policy, list(settings_row.redaction_patterns or [])

    def policy_options(self) -> list[tuple[BoundWidget, str]]:
        """Each radio button with its one-line explanation."""
        return [(radio, CONTENT_POLICY_HELP.get(radio.data["value"], "")) for radio in self["content_policy"]]

    def service_arguments(self) -> dict[str, Any]:
        """Keyword arguments for `audit_settings_update`."""
        return {
            "content_policy": self.cleaned_data["content_policy"],
            "redaction_patterns": self.cleaned_data["redaction_patterns"],
        }


class RetentionForm(forms.Form):
    """How long events are kept, and the legal hold that stops every purge."""

    saved_message = "Saved retention and legal hold."

    retention_days = forms.IntegerField(
        label="Retention (days)",
        required=False,
        min_value=1,
        max_value=MAX_RETENTION_DAYS,
        help_text="Events older than this are purged. Empty: keep every event forever.",
    )
    legal_hold = forms.BooleanField(
        label="Legal hold: purge nothing while it is on",
        required=False,
    )
    legal_hold_reason = forms.CharField(
        label="Reason for the hold",
        required=False,
        max_length=2000,
        help_text="Required to put a hold on, e.g. a case number.",
    )

    def __init__(self, *args: Any, current: AuditSettings, **kwargs: Any) -> None:
        kwargs.setdefault(
            "initial",
            {
                "retention_days": current.retention_days,
                "legal_hold": current.legal_hold,
                "legal_hold_reason": current.legal_hold_reason,
            },
        )
        super().__init__(*args, **kwargs)
        self.current = current
        if current.legal_hold:
            self.fields["release_reason"] = forms.CharField(
                label="Why the hold is lifted",
                required=False,
                max_length=2000,
                help_text="Recorded in the audit log when you untick the legal hold.",
            )

    @staticmethod
    def state(settings_row: AuditSettings) -> object:
        """What this form edits, to tell whether a save changed anything."""
        return settings_row.retention_days, settings_row.legal_hold, settings_row.legal_hold_reason

    def service_arguments(self) -> dict[str, Any]:
        """Arguments for `audit_retention_update`: the hold only when (un)ticked, its reason whenever given."""
        data = self.cleaned_data
        arguments: dict[str, Any] = {"retention_days": data["retention_days"]}
        hold, reason = data["legal_hold"], data["legal_hold_reason"]
        if hold != self.current.legal_hold:
            arguments["legal_hold"] = hold
            arguments["legal_hold_reason"] = reason if hold else data.get("release_reason", "")
        elif hold or reason:
            # Changing the reason of a hold that stays on, or a reason without ticking the hold (the service refuses).
            arguments["legal_hold_reason"] = reason
        return arguments
