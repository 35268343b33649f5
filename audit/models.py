"""The append-only, hash-chained audit log."""

from __future__ import annotations

import uuid

from django.db import models

from organizations.models import Organization


class Outcome(models.TextChoices):
    """How an audited action ended."""

    SUCCESS = "success", "Success"
    FAILURE = "failure", "Failure"
    DENIED = "denied", "Denied"


class ActorType(models.TextChoices):
    """Who performed an audited action."""

    USER = "user", "User"
    AGENT = "agent", "Agent acting for a user"
    TOKEN = "token", "API token"
    SYSTEM = "system", "System"


class AuditEvent(models.Model):
    """One audited action; never updated or deleted by the application.

    `hash = sha256(prev_hash || canonical_json(event))` chains each organization's events.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="audit_events")
    sequence = models.BigIntegerField()
    occurred_at = models.DateTimeField()
    action = models.CharField(max_length=100)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.SUCCESS)
    error = models.TextField(blank=True, default="")
    actor_type = models.CharField(max_length=16, choices=ActorType.choices)
    actor_id = models.CharField(max_length=64, blank=True, default="")
    actor_display = models.CharField(max_length=200, blank=True, default="")
    auth_method = models.CharField(max_length=32, blank=True, default="")
    source_ip = models.CharField(max_length=64, blank=True, default="")
    user_agent = models.CharField(max_length=500, blank=True, default="")
    request_id = models.CharField(max_length=64, blank=True, default="")
    target_type = models.CharField(max_length=64, blank=True, default="")
    target_id = models.CharField(max_length=64, blank=True, default="")
    target_display = models.CharField(max_length=300, blank=True, default="")
    session_id = models.CharField(max_length=64, blank=True, default="", db_index=True)
    workspace_id = models.CharField(max_length=64, blank=True, default="")
    data = models.JSONField(default=dict)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "sequence"], name="audit_event_unique_org_sequence")
        ]
        indexes = [models.Index(fields=["organization", "action", "occurred_at"], name="audit_org_action_time")]
        ordering = ["organization_id", "sequence"]

    def __str__(self) -> str:
        return f"{self.organization_id}#{self.sequence} {self.action}"


class AuditChainHead(models.Model):
    """The latest sequence and hash of an organization's chain; writers lock this row to append."""

    organization = models.OneToOneField(
        Organization, on_delete=models.PROTECT, primary_key=True, related_name="audit_chain_head"
    )
    sequence = models.BigIntegerField(default=0)
    hash = models.CharField(max_length=64, default="0" * 64)
    anchor_sequence = models.BigIntegerField(default=0)
    anchor_hash = models.CharField(max_length=64, default="0" * 64)

    def __str__(self) -> str:
        return f"{self.organization_id} head #{self.sequence}"
