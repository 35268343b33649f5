"""Background exports: a file plus a signed manifest that matches it, followed and downloaded over the API."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from pathlib import Path

import pytest

from audit import signing
from audit.chain import canonical_json
from audit.export_services import ExportParams, export_request, export_run
from audit.jobs.exports import run_audit_export
from audit.models import AuditChainHead, AuditEvent, AuditExport, ExportStatus
from tests.api import api
from tests.audit.conftest import record_mixed_chain
from tests.factories import OrganizationFactory

EXPORTS = "/api/v1/orgs/acme/audit/exports/"


@pytest.fixture
def chain(org, agents_user) -> list[AuditEvent]:
    return record_mixed_chain(org, agents_user, count=8)


def test_job_writes_the_file_and_a_manifest_whose_sha256_and_signature_verify(org, owner, chain, settings):
    export = export_request(actor=owner, organization=org, params=ExportParams(format="jsonl"))
    head = AuditChainHead.objects.get(organization=org)

    run_audit_export(str(export.pk))  # what the Celery worker runs

    export.refresh_from_db()
    assert export.status == ExportStatus.DONE, export.error
    path = Path(export.file_path)
    assert path == Path(settings.AUDIT_EXPORT_DIR) / str(org.pk) / f"{export.pk}.jsonl"
    content = path.read_bytes()
    assert len(content.splitlines()) == len(chain) + 1  # the chain and the export's request event
    manifest = export.manifest
    assert manifest["sha256"] == hashlib.sha256(content).hexdigest() == export.sha256
    assert manifest["row_count"] == export.row_count == len(chain) + 1
    assert (manifest["first_sequence"], manifest["last_sequence"]) == (1, head.sequence)
    assert manifest["head_hash"] == head.hash == export.head_hash
    assert manifest["format"] == "jsonl" and manifest["key_id"] == signing.key_id()
    assert manifest["export_id"] == str(export.pk) and manifest["created_at"].endswith("Z")
    assert signing.verify(canonical_json(manifest).encode(), export.signature)

    on_disk = json.loads((path.parent / f"{export.pk}.manifest.json").read_text())
    assert on_disk["manifest"] == manifest and on_disk["signature"] == export.signature
    assert signing.verify(canonical_json(on_disk["manifest"]).encode(), on_disk["signature"], on_disk["public_key_pem"])
    tampered = {**manifest, "row_count": manifest["row_count"] - 1}
    assert not signing.verify(canonical_json(tampered).encode(), export.signature)


def test_job_is_audited_with_the_row_count(org, owner, chain):
    export = export_request(actor=owner, organization=org, params=ExportParams(format="cef"))

    export_run(export_id=export.pk)

    requested = AuditEvent.objects.get(action="audit.export_requested")
    exported = AuditEvent.objects.get(action="audit.exported")
    assert requested.actor_display == exported.actor_display == "olivia"
    assert exported.data["row_count"] == len(chain) + 1
    assert exported.data["channel"] == "background"
    assert exported.data["export_id"] == str(export.pk)
    assert exported.target_id == str(export.pk)


def test_job_failure_marks_the_export_failed_saying_what_happened(org, owner, chain, settings, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the export folder should be")
    settings.AUDIT_EXPORT_DIR = blocker
    export = export_request(actor=owner, organization=org, params=ExportParams(format="csv"))

    export_run(export_id=export.pk)

    export.refresh_from_db()
    assert export.status == ExportStatus.FAILED
    assert "could not write the export file" in export.error and "not-a-folder" not in export.error
    failure = AuditEvent.objects.get(action="audit.exported")
    assert failure.outcome == "failure" and "could not write" in failure.error


def test_api_lists_shows_and_hides_exports_by_organization(org, owner, auditor, agents_user, outsider, chain):
    export = export_request(actor=owner, organization=org, params=ExportParams(format="jsonl"))
    export_run(export_id=export.pk)
    globex = OrganizationFactory(slug="globex")
    foreign = AuditExport.objects.create(organization=globex, format="jsonl", status=ExportStatus.DONE)

    shown = api(auditor).get(f"{EXPORTS}{export.pk}/")
    assert shown.status_code == 200
    assert shown.json()["status"] == "done" and shown.json()["manifest"]["row_count"] == len(chain) + 1
    assert "file_path" not in shown.json()
    assert [e["id"] for e in api(auditor).get(EXPORTS).json()["results"]] == [str(export.pk)]
    assert api(owner).get(f"{EXPORTS}{foreign.pk}/").status_code == 404
    assert api(owner).get(f"{EXPORTS}{foreign.pk}/download").status_code == 404
    assert api(owner).get(f"{EXPORTS}{uuid.uuid4()}/").status_code == 404
    assert api(agents_user).get(EXPORTS).status_code == 403
    assert api(agents_user).post(EXPORTS, {"format": "jsonl"}, format="json").status_code == 403
    assert api(outsider).get(f"{EXPORTS}{export.pk}/").status_code == 404


def test_download_streams_the_exported_file(org, owner, chain):
    export = export_request(actor=owner, organization=org, params=ExportParams(format="ocsf"))
    export_run(export_id=export.pk)
    export.refresh_from_db()

    response = api(owner).get(f"{EXPORTS}{export.pk}/download")

    assert response.status_code == 200
    content = b"".join(response.streaming_content)
    assert hashlib.sha256(content).hexdigest() == export.sha256
    assert response["Content-Disposition"].endswith('.ocsf.jsonl"')


def test_download_of_an_unfinished_export_answers_409(org, owner):
    export = export_request(actor=owner, organization=org, params=ExportParams(format="jsonl"))

    response = api(owner).get(f"{EXPORTS}{export.pk}/download")

    assert response.status_code == 409
    assert "pending" in response.json()["detail"]


def test_request_with_a_bad_format_or_date_answers_400(owner, chain):
    assert "format" in api(owner).post(EXPORTS, {"format": "pdf"}, format="json").json()
    assert list(api(owner).post(EXPORTS, {"format": "csv", "since": "soon"}, format="json").json()) == ["since"]


@pytest.mark.django_db(transaction=True)
def test_posted_export_runs_in_a_thread_with_the_inline_runner(org, owner, agents_user, settings):
    settings.AGENT_RUNNER = "inline"
    record_mixed_chain(org, agents_user, count=4)

    response = api(owner).post(EXPORTS, {"format": "csv", "since": "2000-01-01"}, format="json")

    assert response.status_code == 202
    assert response.json()["status"] == "pending"
    url = f"{EXPORTS}{response.json()['id']}/"
    deadline = time.monotonic() + 30
    while (shown := api(owner).get(url).json())["status"] in ("pending", "running"):
        assert time.monotonic() < deadline, shown
        time.sleep(0.05)
    assert shown["status"] == "done", shown["error"]
    assert shown["row_count"] == 5
    assert shown["manifest"]["since"] == "2000-01-01T00:00:00.000000Z"
    download = api(owner).get(shown["download_url"])
    assert hashlib.sha256(b"".join(download.streaming_content)).hexdigest() == shown["sha256"]
