"""`manage.py audit export`: a file plus a signed manifest, stdout without one, every run audited."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from audit import signing
from audit.chain import canonical_json
from audit.models import AuditEvent
from tests.audit.conftest import record_mixed_chain


@pytest.fixture
def chain(org, agents_user) -> list[AuditEvent]:
    return record_mixed_chain(org, agents_user, count=7)


def export_cli(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("audit", "export", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_cli_writes_the_file_and_a_signed_manifest(org, chain, tmp_path):
    target = tmp_path / "acme.jsonl"

    printed, _ = export_cli("--org", "acme", "--format", "jsonl", "-o", str(target))

    content = target.read_bytes()
    digest = hashlib.sha256(content).hexdigest()
    assert f"Exported {len(chain)} events" in printed and digest in printed
    assert [json.loads(line)["sequence"] for line in content.splitlines()] == [e.sequence for e in chain]
    document = json.loads((tmp_path / "acme.jsonl.manifest.json").read_text())
    manifest = document["manifest"]
    assert manifest["sha256"] == digest and manifest["row_count"] == len(chain)
    assert manifest["head_hash"] == chain[-1].hash and manifest["last_sequence"] == chain[-1].sequence
    assert manifest["file"] == "acme.jsonl" and manifest["organization"]["slug"] == "acme"
    assert signing.verify(canonical_json(manifest).encode(), document["signature"])
    assert signing.verify(canonical_json(manifest).encode(), document["signature"], document["public_key_pem"])
    assert not list(tmp_path.glob(".*partial"))


def test_cli_export_is_audited_with_the_row_count(org, chain, tmp_path):
    export_cli("--org", "acme", "--format", "cef", "--since", "2000-01-01", "-o", str(tmp_path / "a.cef"))

    event = AuditEvent.objects.get(organization=org, action="audit.exported")
    assert event.actor_type == "system" and event.actor_display.startswith("cli:")
    assert event.data["row_count"] == len(chain)
    assert event.data["format"] == "cef" and event.data["since"] == "2000-01-01T00:00:00.000000Z"
    assert event.data["sha256"] == hashlib.sha256((tmp_path / "a.cef").read_bytes()).hexdigest()


def test_cli_writes_csv_to_stdout_without_a_manifest(org, chain, tmp_path):
    printed, summary = export_cli("--org", "acme", "--format", "csv", "-o", "-")

    rows = list(csv.DictReader(io.StringIO(printed, newline="")))
    assert [row["sequence"] for row in rows] == [str(e.sequence) for e in chain]
    assert f"Exported {len(chain)} events" in summary
    assert AuditEvent.objects.get(action="audit.exported").data["file"] == "-"


def test_cli_unknown_org_fails_naming_the_slug(db):
    with pytest.raises(CommandError, match="No organization with slug 'nope'"):
        export_cli("--org", "nope", "--format", "jsonl", "-o", "-")


def test_cli_bad_since_fails_naming_the_option(org, chain):
    with pytest.raises(CommandError, match="--since"):
        export_cli("--org", "acme", "--format", "jsonl", "--since", "last tuesday", "-o", "-")


def test_cli_missing_folder_fails_saying_so(org, chain, tmp_path):
    with pytest.raises(CommandError, match="does not exist"):
        export_cli("--org", "acme", "--format", "jsonl", "-o", str(tmp_path / "missing" / "x.jsonl"))


def test_cli_without_a_signing_key_fails_before_writing(org, chain, tmp_path, settings):
    settings.AIRLOCK_AUDIT_SIGNING_KEY = ""

    with pytest.raises(CommandError, match="AIRLOCK_AUDIT_SIGNING_KEY"):
        export_cli("--org", "acme", "--format", "jsonl", "-o", str(tmp_path / "x.jsonl"))
    assert not list(tmp_path.iterdir())


def test_cli_in_a_real_process_writes_the_file(manage_py, transactional_db, tmp_path):
    from organizations.models import Organization
    from tests.factories import UserFactory

    organization = Organization.objects.create(slug="initech", name="Initech")
    record_mixed_chain(organization, UserFactory(username="peter"), count=3)

    run = manage_py("audit", "export", "--org", "initech", "--format", "ocsf", "-o", str(tmp_path / "i.ocsf"))

    assert run.returncode == 0, run.stderr
    assert "Exported 3 events" in run.stdout
    assert len((tmp_path / "i.ocsf").read_text().splitlines()) == 3
    assert (tmp_path / "i.ocsf.manifest.json").exists()
