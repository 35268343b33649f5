"""Exports of the audit log: streamed answers, files with a signed manifest, and background export jobs.

Every export is itself audited as `audit.exported` (format, range, channel and, where known, the row count):

* a streamed API answer writes its event *before* the first byte, with the format and range: the row count
  is only known once the client has read the whole body, after the response has left the view;
* a file written by the CLI or a background job writes its event when the file is complete, with the row
  count, the sequences, the sha256 and the manifest's signing key id (a failed job writes a failure event).

An export is a snapshot of the chain up to the head it started from: events appended while it runs
(its own audit event among them) are not in it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from audit import record, signing
from audit.chain import GENESIS_HASH, canonical_json, format_time
from audit.chaining import chain_committed
from audit.exporters import FORMATS, ExportStats, formatter, iter_export_bytes, iter_value_pages
from audit.models import AuditChainHead, AuditExport, ExportFormat, ExportStatus
from audit.selectors import VIEW_ACTION, parse_moment
from audit.services import Actor, SystemActor
from organizations.models import Organization
from organizations.permissions import require_permission

logger = logging.getLogger(__name__)

EXPORTED = "audit.exported"
REQUESTED = "audit.export_requested"


@dataclass(frozen=True)
class ExportParams:
    """What to export: a format and an optional time range (`since` inclusive, `until` exclusive)."""

    format: str
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def range_data(self) -> dict[str, str | None]:
        """The range as audit/manifest data."""
        return {
            "since": format_time(self.since) if self.since else None,
            "until": format_time(self.until) if self.until else None,
        }


def export_params_parse(*, format: str | None, since: str | None = None, until: str | None = None) -> ExportParams:
    """Validate user input into ExportParams; ValidationError naming the parameter to fix."""
    if format not in FORMATS:
        raise ValidationError({"format": f"Choose the export format: one of {', '.join(FORMATS)} (got {format!r})."})
    start = parse_moment("since", since) if since else None
    end = parse_moment("until", until) if until else None
    if start is not None and end is not None and start >= end:
        raise ValidationError({"until": "must be later than since."})
    return ExportParams(format=format, since=start, until=end)


def _head(organization: Organization) -> tuple[int, str]:
    head = AuditChainHead.objects.filter(organization_id=organization.pk).values_list("sequence", "hash").first()
    return head if head is not None else (0, GENESIS_HASH)


def _check_actor(actor: Actor | AnonymousUser, organization: Organization) -> None:
    """Users need the audit.view permission (owners, auditors); system actors are operators (CLI, jobs)."""
    if isinstance(actor, SystemActor):
        return
    if actor is None:
        raise ValueError("An export needs an actor: the requesting user or a SystemActor.")
    require_permission(actor, organization, VIEW_ACTION)


def export_filename(*, organization: Organization, export_format: str, moment: dt.datetime | None = None) -> str:
    """The download name: airlock-audit-<slug>-<UTC time>.<extension>."""
    stamp = (moment or timezone.now()).astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"airlock-audit-{organization.slug}-{stamp}.{formatter(export_format).EXTENSION}"


def _chunks(organization: Organization, params: ExportParams, upto: int, stats: ExportStats) -> Iterator[bytes]:
    """The export's bytes, a chunk at a time, up to sequence `upto`."""
    module = formatter(params.format)
    pages = iter_value_pages(
        organization=organization,
        since=params.since,
        until=params.until,
        upto_sequence=upto,
        raw_data=getattr(module, "RAW_DATA", False),
    )
    return iter_export_bytes(module, pages, organization_slug=organization.slug, stats=stats)


# Streaming -----------------------------------------------------------------------------------------------------


@dataclass
class StreamedExport:
    """A streamed export: the body chunks, the download name and type, and what was streamed so far."""

    chunks: Iterator[bytes]
    filename: str
    content_type: str
    stats: ExportStats
    upto_sequence: int


def export_stream_open(
    *, actor: AbstractBaseUser | AnonymousUser | SystemActor, organization: Organization, params: ExportParams
) -> StreamedExport:
    """Check the actor may read the log, audit the export (format and range, before any byte), return the stream.

    Raises PermissionDenied for members without the owner or auditor role. The audit event is committed
    before the body is streamed; its row count is unknown (null) because the body is read after the view.
    """
    _check_actor(actor, organization)
    chain_committed(organization.pk)  # the stream ends before its own event: nothing committed earlier is left out
    with transaction.atomic():
        event = record(
            action=EXPORTED,
            actor=actor,
            organization=organization,
            data={"format": params.format, **params.range_data(), "channel": "api", "row_count": None},
            immediate=True,  # its sequence bounds the stream
        )
    upto = event.sequence - 1
    stats = ExportStats()
    module = formatter(params.format)
    return StreamedExport(
        chunks=_chunks(organization, params, upto, stats),
        filename=export_filename(organization=organization, export_format=params.format),
        content_type=module.CONTENT_TYPE,
        stats=stats,
        upto_sequence=upto,
    )


# Files and manifests -------------------------------------------------------------------------------------------


def manifest_signature(manifest: dict[str, Any]) -> str:
    """The Ed25519 signature (hex) over the canonical JSON of a manifest."""
    return signing.sign(canonical_json(manifest).encode("utf-8"))


def manifest_verify(manifest: dict[str, Any], signature: str, public_pem: str | None = None) -> bool:
    """Whether a manifest's signature is valid (for the configured key, or a given public key PEM)."""
    return signing.verify(canonical_json(manifest).encode("utf-8"), signature, public_pem)


@dataclass(frozen=True)
class ExportResult:
    """A finished file export: its stats, the signed manifest (None for a stream to stdout)."""

    stats: ExportStats
    manifest: dict[str, Any] | None
    signature: str


def export_write(
    *,
    actor: Actor,
    organization: Organization,
    params: ExportParams,
    out: BinaryIO,
    file_name: str = "",
    export_id: uuid.UUID | None = None,
    sign: bool = True,
) -> ExportResult:
    """Write an export to a binary file object, then build and sign its manifest (unless `sign` is False).

    The caller audits the export (see `export_to_file`, `export_run`); nothing is recorded here.
    """
    _check_actor(actor, organization)
    key_id = signing.key_id() if sign else ""  # fail before writing anything when no key is configured
    chain_committed(organization.pk)  # the manifest's head covers every event committed before the export
    head_sequence, head_hash = _head(organization)
    stats = ExportStats()
    for chunk in _chunks(organization, params, head_sequence, stats):
        out.write(chunk)
    out.flush()
    if not sign:
        return ExportResult(stats=stats, manifest=None, signature="")
    manifest = {
        "product": {"name": "Airlock", "version": settings.AIRLOCK_VERSION},
        "organization": {"id": organization.pk, "slug": organization.slug},
        "export_id": str(export_id) if export_id else None,
        "file": file_name,
        "format": params.format,
        **params.range_data(),
        "row_count": stats.row_count,
        "first_sequence": stats.first_sequence,
        "last_sequence": stats.last_sequence,
        "head_sequence": head_sequence,
        "head_hash": head_hash,
        "sha256": stats.sha256,
        "bytes": stats.byte_count,
        "created_at": format_time(timezone.now()),
        "key_id": key_id,
        "signature_algorithm": "Ed25519 over the canonical JSON of this manifest (sorted keys, no spaces, UTF-8)",
    }
    return ExportResult(stats=stats, manifest=manifest, signature=manifest_signature(manifest))


def manifest_document(result: ExportResult) -> bytes:
    """The manifest file's content: the manifest, its signature and the public key to check it with."""
    document = {"manifest": result.manifest, "signature": result.signature, "public_key_pem": signing.public_key_pem()}
    return (canonical_json(document) + "\n").encode("utf-8")


def _exported_data(params: ExportParams, result: ExportResult, channel: str, **extra: Any) -> dict[str, Any]:
    stats = result.stats
    return {
        "format": params.format,
        **params.range_data(),
        "channel": channel,
        "row_count": stats.row_count,
        "first_sequence": stats.first_sequence,
        "last_sequence": stats.last_sequence,
        "sha256": stats.sha256,
        "key_id": (result.manifest or {}).get("key_id", ""),
        **extra,
    }


def export_to_file(*, actor: Actor, organization: Organization, params: ExportParams, path: Path) -> ExportResult:
    """Write the export to `path` and its signed manifest to `path.manifest.json`; audit it with the row count.

    The file is written to a temporary name first and renamed when complete, so a crash leaves no half file.
    """
    path = Path(path)
    partial_path = path.with_name(f".{path.name}.partial")
    try:
        with open(partial_path, "wb") as out:
            result = export_write(actor=actor, organization=organization, params=params, out=out, file_name=path.name)
        os.replace(partial_path, path)
    finally:
        _remove(partial_path)
    manifest_path = path.with_name(path.name + ".manifest.json")
    manifest_path.write_bytes(manifest_document(result))
    with transaction.atomic():
        record(
            action=EXPORTED,
            actor=actor,
            organization=organization,
            data=_exported_data(params, result, "cli", file=path.name),
        )
    return result


def export_to_stream(*, actor: Actor, organization: Organization, params: ExportParams, out: BinaryIO) -> ExportStats:
    """Write the export to an open binary stream (stdout) without a manifest; audit it with the row count."""
    result = export_write(actor=actor, organization=organization, params=params, out=out, sign=False)
    with transaction.atomic():
        record(
            action=EXPORTED,
            actor=actor,
            organization=organization,
            data=_exported_data(params, result, "cli", file="-"),
        )
    return result.stats


# Background exports --------------------------------------------------------------------------------------------


def exports_for_user(*, user: AbstractBaseUser | AnonymousUser, organization: Organization) -> QuerySet[AuditExport]:
    """The organization's background exports, newest first; PermissionDenied unless the user may read the log."""
    require_permission(user, organization, VIEW_ACTION)
    return AuditExport.objects.filter(organization_id=organization.pk).order_by("-created_at")


@transaction.atomic
def export_request(*, actor: AbstractBaseUser, organization: Organization, params: ExportParams) -> AuditExport:
    """Queue a background export (owners and auditors); the job starts once this transaction commits."""
    require_permission(actor, organization, VIEW_ACTION)
    export = AuditExport.objects.create(
        organization=organization,
        requested_by=actor,
        format=params.format,
        since=params.since,
        until=params.until,
        status=ExportStatus.PENDING,
    )
    record(
        action=REQUESTED,
        actor=actor,
        organization=organization,
        target=export,
        data={"format": params.format, **params.range_data(), "export_id": str(export.pk)},
    )
    transaction.on_commit(partial(export_dispatch, export.pk))
    return export


def export_dispatch(export_id: uuid.UUID) -> None:
    """Start a committed export: a Celery task, or, with the inline runner (no broker), a thread of this process.

    The inline thread is the embedded deployment's stand-in for a worker: it runs in the web process, so an
    export in progress is lost if the process stops (its row stays `running`; request it again).
    """
    if settings.AGENT_RUNNER == "inline":
        thread = threading.Thread(
            target=_run_in_thread, args=(export_id,), daemon=True, name=f"audit-export-{export_id}"
        )
        thread.start()
        return
    from audit.jobs.exports import run_audit_export

    run_audit_export.delay(str(export_id))


def _run_in_thread(export_id: uuid.UUID) -> None:
    try:
        export_run(export_id=export_id)
    except Exception:  # export_run records failures itself; this only keeps the thread from dying noisily
        logger.exception("audit export %s crashed", export_id)
    finally:
        connection.close()


def export_file_paths(export: AuditExport) -> tuple[Path, Path]:
    """Where a background export's file and manifest live: AUDIT_EXPORT_DIR/<org id>/<export id>.<ext>."""
    folder = Path(settings.AUDIT_EXPORT_DIR) / str(export.organization_id)
    extension = formatter(export.format).EXTENSION
    return folder / f"{export.pk}.{extension}", folder / f"{export.pk}.manifest.json"


def _remove(path: Path) -> None:
    """Remove a partial file if there is one (its folder may not even exist)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        logger.warning("could not remove the partial export file %s", path)


def _describe(exc: BaseException) -> str:
    """What went wrong, for the export's owners and auditors: never the server's file path (the log has it)."""
    if isinstance(exc, OSError):
        logger.warning("audit export could not write its file: %s", exc)
        return (
            f"could not write the export file: {exc.strerror or type(exc).__name__} (the server's log names the path)"
        )
    return f"{type(exc).__name__}: {exc}"


def export_run(*, export_id: uuid.UUID) -> AuditExport:
    """Run a pending export: write the file and its signed manifest, mark it done (or failed, saying why)."""
    export = AuditExport.objects.select_related("organization", "requested_by").get(pk=export_id)
    if export.status != ExportStatus.PENDING:
        return export
    AuditExport.objects.filter(pk=export.pk).update(status=ExportStatus.RUNNING)
    organization = export.organization
    actor: Actor = export.requested_by or SystemActor("audit-export")
    params = ExportParams(format=export.format, since=export.since, until=export.until)
    path, manifest_path = export_file_paths(export)
    partial_path = path.with_name(f".{path.name}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(partial_path, "wb") as out:
            result = export_write(
                actor=actor,
                organization=organization,
                params=params,
                out=out,
                file_name=path.name,
                export_id=export.pk,
            )
        os.replace(partial_path, path)
        manifest_path.write_bytes(manifest_document(result))
    except Exception as exc:
        _remove(partial_path)
        return _export_failed(export, actor, params, _describe(exc))
    return _export_done(export, actor, params, path, result)


@transaction.atomic
def _export_done(
    export: AuditExport, actor: Actor, params: ExportParams, path: Path, result: ExportResult
) -> AuditExport:
    stats, manifest = result.stats, result.manifest or {}
    export.status = ExportStatus.DONE
    export.file_path = str(path)
    export.row_count = stats.row_count
    export.first_sequence = stats.first_sequence
    export.last_sequence = stats.last_sequence
    export.head_hash = manifest.get("head_hash", "")
    export.sha256 = stats.sha256
    export.manifest = manifest
    export.signature = result.signature
    export.error = ""
    export.finished_at = timezone.now()
    export.save()
    record(
        action=EXPORTED,
        actor=actor,
        organization=export.organization,
        target=export,
        data=_exported_data(params, result, "background", export_id=str(export.pk)),
    )
    return export


@transaction.atomic
def _export_failed(export: AuditExport, actor: Actor, params: ExportParams, error: str) -> AuditExport:
    export.status = ExportStatus.FAILED
    export.error = error[:4000]
    export.finished_at = timezone.now()
    export.save(update_fields=["status", "error", "finished_at"])
    record(
        action=EXPORTED,
        actor=actor,
        organization=export.organization,
        target=export,
        outcome="failure",
        error=error,
        data={"format": params.format, **params.range_data(), "channel": "background", "export_id": str(export.pk)},
    )
    return export


__all__ = [
    "EXPORTED",
    "REQUESTED",
    "ExportFormat",
    "ExportParams",
    "ExportResult",
    "StreamedExport",
    "export_dispatch",
    "export_file_paths",
    "export_filename",
    "export_params_parse",
    "export_request",
    "export_run",
    "export_stream_open",
    "export_to_file",
    "export_to_stream",
    "export_write",
    "exports_for_user",
    "manifest_document",
    "manifest_signature",
    "manifest_verify",
]
