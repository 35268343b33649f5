"""The append-only, hash-chained audit log."""

from __future__ import annotations

import uuid

from django.conf import settings
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


class AuditEventContent(models.Model):
    """What an event says (AU-3: what, outcome, who, from where, on what, correlation ids, details).

    Shared by the chained `AuditEvent` and the `AuditPendingEvent` waiting for its place in the chain.
    """

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
    workspace_id = models.CharField(max_length=64, blank=True, default="")
    model_call_id = models.CharField(max_length=64, blank=True, default="")
    data = models.JSONField(default=dict)

    class Meta:
        abstract = True


class AuditEvent(AuditEventContent):
    """One audited action; never updated or deleted by the application.

    `hash = sha256(prev_hash || canonical_json(event))` chains each organization's events.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Every index costs each ingested event an insert: the organization's own index is left out (the
    # (organization, sequence) constraint's index starts with it), and sessions are looked up per organization.
    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="audit_events", db_index=False
    )
    sequence = models.BigIntegerField()
    occurred_at = models.DateTimeField()
    session_id = models.CharField(max_length=64, blank=True, default="")
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "sequence"], name="audit_event_unique_org_sequence")
        ]
        indexes = [
            models.Index(fields=["organization", "action", "occurred_at"], name="audit_org_action_time"),
            models.Index(fields=["organization", "session_id"], name="audit_org_session"),
        ]
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


class AuditPendingEvent(AuditEventContent):
    """An event written by `record()` in batched chaining mode, waiting for the chainer to give it its place.

    `record()` inserts it in the caller's transaction (so it commits or rolls back with the caller) without
    touching the chain head; `audit.chaining.chain_pending` later moves it, in id order, into `AuditEvent` with
    the same `event_id`, a sequence number and its hashes, and deletes it, in one transaction. Rows here are
    therefore moved, not kept: unlike `audit_auditevent` this table has no append-only trigger on PostgreSQL
    (the chainer must delete them). Tampering with a pending row before it is chained is not detectable by the
    chain; `verify_chain` reports rows that wait longer than `AUDIT_PENDING_STALE_SECONDS`.
    """

    id = models.BigAutoField(primary_key=True)
    # Not unique and not indexed: the chained AuditEvent's primary key is what rejects a repeated id.
    event_id = models.UUIDField(default=uuid.uuid4, editable=False)
    # No foreign-key constraint and no index of its own (the (organization, id) index serves the chainer): every
    # ingest INSERT would otherwise lock the organization row FOR KEY SHARE, and concurrent writers of one
    # organization then share that lock through a MultiXact. The chained AuditEvent keeps the real constraint.
    organization = models.ForeignKey(
        Organization,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        related_name="audit_pending_events",
    )
    occurred_at = models.DateTimeField()
    session_id = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        indexes = [models.Index(fields=["organization", "id"], name="audit_pending_org_id")]
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.organization_id} pending {self.id} {self.action}"


class ContentPolicy(models.TextChoices):
    """How much of prompts, answers and command output an organization's audit events keep."""

    FULL = "full", "Full text (secrets masked)"
    REDACTED = "redacted", "Redacted (secrets and configured patterns masked)"
    DIGEST = "digest", "Digest only (sha256 of prompts and output)"


class AuditSettings(models.Model):
    """An organization's audit policy: content kept, retention and legal hold."""

    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, primary_key=True, related_name="audit_settings"
    )
    content_policy = models.CharField(max_length=16, choices=ContentPolicy.choices, default=ContentPolicy.FULL)
    redaction_patterns = models.JSONField(default=list, blank=True, help_text="Regular expressions to mask.")
    retention_days = models.PositiveIntegerField(null=True, blank=True, help_text="Empty: keep forever.")
    legal_hold = models.BooleanField(default=False, help_text="While on, nothing is purged.")
    legal_hold_reason = models.TextField(blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"audit settings of {self.organization_id}"


class AuditCheckpoint(models.Model):
    """A signed statement of a chain's head (Ed25519), so that a truncated tail is detected."""

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="audit_checkpoints")
    sequence = models.BigIntegerField()
    hash = models.CharField(max_length=64)
    signed_at = models.DateTimeField()
    key_id = models.CharField(max_length=64, help_text="sha256 of the public key, hex (first 16 bytes).")
    signature = models.CharField(max_length=128, help_text="Ed25519 signature, hex.")

    class Meta:
        ordering = ["organization_id", "sequence"]
        indexes = [models.Index(fields=["organization", "-signed_at"], name="audit_checkpoint_latest")]

    def __str__(self) -> str:
        return f"{self.organization_id} checkpoint #{self.sequence}"


class AuditPurge(models.Model):
    """One run of the retention purge, written by the database function that deleted the events (migration 0008).

    On PostgreSQL only that function writes these rows and a trigger refuses to change or delete them, so every
    purge leaves a trace the application cannot remove; `audit verify` checks that each has its `audit.purged`.
    """

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="audit_purges")
    from_sequence = models.BigIntegerField()
    to_sequence = models.BigIntegerField()
    anchor_hash = models.CharField(max_length=64, help_text="Hash of event #to_sequence, where the chain now starts.")
    deleted = models.BigIntegerField()
    retention_days = models.PositiveIntegerField()
    purged_at = models.DateTimeField()
    database_user = models.CharField(max_length=100, help_text="The database session's user that called the purge.")

    class Meta:
        ordering = ["organization_id", "to_sequence"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "to_sequence"], name="audit_purge_unique_org_to_sequence")
        ]

    def __str__(self) -> str:
        return f"{self.organization_id} purge #{self.from_sequence}-#{self.to_sequence}"


class AuditRetentionFloor(models.Model):
    """The deployment operator's minimum retention, one row for the whole deployment: no organization may keep its
    audit events for fewer days, and the purge function (migration 0009) refuses a purge under it. On PostgreSQL
    `audit grants` leaves the services' role only SELECT on it, so the application cannot lower it; the operator
    sets it with the owner's credentials (`manage.py audit retention_floor --days N`)."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    minimum_days = models.PositiveIntegerField()
    set_at = models.DateTimeField()
    set_by = models.CharField(max_length=100, help_text="The database user (or operator) that set it.")

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(id=1), name="audit_retention_floor_one_row")]

    def __str__(self) -> str:
        return f"audit events kept at least {self.minimum_days} days"


class ExportFormat(models.TextChoices):
    """Formats the audit log is exported in."""

    JSONL = "jsonl", "JSON Lines"
    CSV = "csv", "CSV"
    OCSF = "ocsf", "OCSF 1.x (JSON Lines)"
    CEF = "cef", "CEF"


class ExportStatus(models.TextChoices):
    """Where a background export stands."""

    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class AuditExport(models.Model):
    """A background export: a file plus a signed manifest (row count, sequences, head hash, sha256)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="audit_exports")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    format = models.CharField(max_length=8, choices=ExportFormat.choices)
    since = models.DateTimeField(null=True, blank=True)
    until = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=ExportStatus.choices, default=ExportStatus.PENDING)
    file_path = models.CharField(max_length=1000, blank=True, default="")
    row_count = models.BigIntegerField(default=0)
    first_sequence = models.BigIntegerField(null=True, blank=True)
    last_sequence = models.BigIntegerField(null=True, blank=True)
    head_hash = models.CharField(max_length=64, blank=True, default="")
    sha256 = models.CharField(max_length=64, blank=True, default="")
    manifest = models.JSONField(default=dict, blank=True)
    signature = models.CharField(max_length=128, blank=True, default="")
    error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"export {self.id} ({self.format}, {self.status})"


class DestinationKind(models.TextChoices):
    """SIEM destinations events are forwarded to."""

    SPLUNK_HEC = "splunk-hec", "Splunk HTTP Event Collector"
    WEBHOOK = "webhook", "HTTPS webhook (HMAC-SHA256 signed)"
    SYSLOG = "syslog", "Syslog (RFC 5424 over TCP or TLS)"


class AuditDestination(models.Model):
    """Where an organization's events are forwarded; the log itself is the outbox, read after `delivered_sequence`.

    An event is queued for every enabled destination by the same transaction that appends it (its sequence
    is past the destination's cursor); delivery advances the cursor only after the receiver acknowledged.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="audit_destinations")
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=16, choices=DestinationKind.choices)
    url = models.CharField(max_length=500, blank=True, default="", help_text="HEC or webhook URL.")
    host = models.CharField(max_length=255, blank=True, default="", help_text="Syslog host.")
    port = models.PositiveIntegerField(null=True, blank=True)
    use_tls = models.BooleanField(default=False)
    ca_certificate = models.TextField(blank=True, default="", help_text="PEM bundle to trust (TLS).")
    secret_encrypted = models.TextField(blank=True, default="", help_text="HEC token or HMAC secret, encrypted.")
    secret_hint = models.CharField(max_length=4, blank=True, default="")
    client_certificate = models.TextField(
        blank=True, default="", help_text="PEM certificate (chain) Airlock presents over TLS (mutual TLS)."
    )
    client_key_encrypted = models.TextField(blank=True, default="", help_text="Its private key, encrypted.")
    options = models.JSONField(default=dict, blank=True)
    enabled = models.BooleanField(default=True)
    delivered_sequence = models.BigIntegerField(default=0, help_text="Last sequence the receiver acknowledged.")
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    last_error_at = models.DateTimeField(null=True, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "name"], name="audit_destination_unique_name")]
        ordering = ["organization_id", "name"]

    def __str__(self) -> str:
        return self.name
