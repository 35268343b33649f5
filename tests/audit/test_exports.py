"""Audit exports: every format parses back with its fields, escaping and injection guards hold, and the stream
reads the log a page at a time, within the chain head it started from."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import tracemalloc
import uuid

import pytest
from django.db import connection

from audit import record
from audit.chain import GENESIS_HASH, chain_hash, event_document, format_time, normalize
from audit.context import bound
from audit.export_services import ExportParams, export_stream_open
from audit.exporters import (
    FORMATS,
    PAGE_SIZE,
    RENDER_ROWS,
    cef,
    iter_event_rows,
    iter_export_bytes,
    iter_value_pages,
    jsonl,
    ocsf,
)
from audit.exporters import csv as csv_format
from audit.exporters.timefmt import utc_text
from audit.models import AuditChainHead, AuditEvent
from audit.services import SystemActor
from tests.audit.conftest import SESSION_ID, record_mixed_chain


def export_text(org, export_format: str, **range_: object) -> str:
    """The whole export of acme as text, through the streaming generator."""
    module = FORMATS[export_format]
    pages = iter_value_pages(organization=org, raw_data=getattr(module, "RAW_DATA", False), **range_)
    return b"".join(iter_export_bytes(module, pages, organization_slug=org.slug)).decode()


def one_row(org, action: str) -> dict:
    """The row dict of the latest event with that action."""
    return next(row for row in reversed(list(iter_event_rows(organization=org))) if row["action"] == action)


@pytest.fixture
def chain(org, agents_user) -> list[AuditEvent]:
    """Mixed events, a login, a denied action with a formula-looking error."""
    events = record_mixed_chain(org, agents_user, count=8)
    with bound(request_id="req-login", source_ip="192.0.2.10", user_agent="Firefox/128", auth_method="password"):
        events.append(record(action="auth.login", actor=agents_user, organization=org))
        events.append(
            record(
                action="auth.login_failed",
                actor=agents_user,
                organization=org,
                outcome="failure",
                error="bad password",
            )
        )
        events.append(
            record(
                action="provider.deleted",
                actor=agents_user,
                organization=org,
                outcome="denied",
                error='=HYPERLINK("http://evil.example","click"), then "quotes"\nand a second line',
                data={"note": "-2+3", "cmd": "@SUM(A1)"},
            )
        )
    return events


def test_json_lines_parse_back_with_every_au3_field(org, chain, settings):
    lines = export_text(org, "jsonl").splitlines()

    assert len(lines) == len(chain)
    documents = [json.loads(line) for line in lines]
    assert [d["sequence"] for d in documents] == [e.sequence for e in chain]
    login = next(d for d in documents if d["action"] == "auth.login")
    assert login["organization"] == {"id": org.pk, "slug": "acme"}
    assert login["actor"] == {"type": "user", "id": str(chain[-3].actor_id), "display": "alice"}
    assert login["source_ip"] == "192.0.2.10"
    assert login["user_agent"] == "Firefox/128"
    assert login["request_id"] == "req-login"
    assert login["auth_method"] == "password"
    assert login["occurred_at"].endswith("Z") and len(login["occurred_at"]) == len("2025-01-01T00:00:00.000000Z")
    assert login["product"] == {"name": "Airlock", "version": settings.AIRLOCK_VERSION}
    model_call = next(d for d in documents if d["action"] == "model.call")
    assert model_call["session_id"] == SESSION_ID
    assert model_call["actor"]["type"] == "agent"
    assert model_call["data"]["tokens"]["in"] == 120
    command = next(d for d in documents if d["action"] == "workspace.command")
    assert command["outcome"] == "failure" and command["error"] == "exit status 2"
    assert command["workspace_id"] == "42"
    assert set(login) >= {"id", "target", "model_call_id", "prev_hash", "hash", "error", "outcome", "data"}


def test_json_lines_fast_template_writes_the_documented_object(org, chain):
    for row in iter_event_rows(organization=org):
        assert json.loads(jsonl.render(row)) == json.loads(json.dumps(jsonl.document(row), default=str))


@pytest.mark.parametrize(
    "moment",
    [
        dt.datetime(2025, 1, 31, 8, 0, tzinfo=dt.UTC),
        dt.datetime(2025, 1, 31, 8, 0, 0, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        dt.datetime(999, 1, 1, tzinfo=dt.UTC),
    ],
)
def test_export_times_are_the_hashed_utc_text(moment):
    assert utc_text(moment) == format_time(moment)


def test_json_lines_rehash_to_the_stored_chain(org, chain):
    """An auditor can re-verify the chain from the export alone."""
    prev = GENESIS_HASH
    for line in export_text(org, "jsonl").splitlines():
        d = json.loads(line)
        fields = {
            **{k: d[k] for k in ("id", "sequence", "action", "outcome", "error", "auth_method", "source_ip")},
            **{k: d[k] for k in ("user_agent", "request_id", "session_id", "workspace_id", "model_call_id", "data")},
            "organization_id": d["organization"]["id"],
            "occurred_at": dt.datetime.fromisoformat(d["occurred_at"].replace("Z", "+00:00")),
            "actor_type": d["actor"]["type"],
            "actor_id": d["actor"]["id"],
            "actor_display": d["actor"]["display"],
            "target_type": d["target"]["type"],
            "target_id": d["target"]["id"],
            "target_display": d["target"]["display"],
        }
        assert d["prev_hash"] == prev
        assert chain_hash(prev, event_document(fields)) == d["hash"]
        prev = d["hash"]


def test_csv_parses_back_with_a_header_and_data_as_a_json_cell(org, chain):
    text = export_text(org, "csv")

    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert len(rows) == len(chain)
    assert list(rows[0]) == list(csv_format.COLUMNS)
    assert text.endswith("\r\n")
    model_call = next(r for r in rows if r["action"] == "model.call")
    assert json.loads(model_call["data"]) == chain[1].data
    assert model_call["organization_slug"] == "acme"
    assert model_call["sequence"] == str(chain[1].sequence)
    assert model_call["product_name"] == "Airlock"


def test_csv_guards_formula_cells_and_keeps_commas_quotes_and_newlines(org, chain):
    rows = list(csv.DictReader(io.StringIO(export_text(org, "csv"), newline="")))

    denied = next(r for r in rows if r["action"] == "provider.deleted")
    assert denied["error"] == "'" + chain[-1].error  # quoted on the way out, the text intact inside
    assert "\n" in denied["error"] and '"quotes"' in denied["error"]
    assert json.loads(denied["data"]) == {"note": "-2+3", "cmd": "@SUM(A1)"}  # a JSON cell starts with {
    for risky in ("=1+2", "+1", "-1", "@A1", "\tx", "\rx"):
        assert csv_format.cell(risky) in ("'" + risky, "\"'" + risky + '"')
    assert csv_format.cell("plain") == "plain"


def test_cef_escapes_header_and_extension_specials():
    row = {
        "id": uuid.uuid4(),
        "organization_id": 1,
        "organization_slug": "acme",
        "sequence": 7,
        "occurred_at": dt.datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=dt.UTC),
        "action": "odd|action\\name",
        "outcome": "denied",
        "error": "a=b\nsecond\\line",
        "actor_display": "eve|=x",
        "actor_id": "3",
        "source_ip": "10.1.2.3",
        "user_agent": "curl/8",
        "session_id": "s-1",
        "request_id": "",
        "workspace_id": "",
        "hash": "ab" * 32,
    }

    line = cef.render(row)

    assert line.startswith("CEF:0|Airlock|Airlock|")
    assert "|odd\\|action\\\\name|odd\\|action\\\\name|8|" in line
    assert line.count("\n") == 1 and line.endswith("\n")
    assert "msg=a\\=b\\nsecond\\\\line" in line
    assert "suser=eve|\\=x" in line  # a pipe needs no escape in the extension
    assert "rt=1740830400123" in line
    assert "externalId=7" in line
    assert "cs1Label=sessionId cs1=s-1" in line
    assert "cs2Label=requestId" not in line  # empty values are left out


def test_cef_line_carries_time_actor_source_and_outcome(org, chain):
    lines = export_text(org, "cef").splitlines()

    assert len(lines) == len(chain)
    login = next(line for line in lines if "|auth.login|" in line)
    assert " src=192.0.2.10" in login and "suser=alice" in login and "outcome=success" in login
    assert "requestClientApplication=Firefox/128" in login
    assert f"externalId={chain[-3].sequence}" in login


def test_ocsf_authentication_event_has_class_3002_and_its_type_uid(org, chain):
    login = json.loads(ocsf.render(one_row(org, "auth.login")))
    failed = json.loads(ocsf.render(one_row(org, "auth.login_failed")))

    assert (login["class_uid"], login["category_uid"], login["activity_id"], login["type_uid"]) == (3002, 3, 1, 300201)
    assert (login["status"], login["status_id"]) == ("Success", 1)
    assert login["actor"]["user"]["name"] == "alice"
    assert login["src_endpoint"] == {"ip": "192.0.2.10"}
    assert login["http_request"] == {"user_agent": "Firefox/128"}
    assert login["metadata"]["product"] == {"name": "Airlock", "vendor_name": "Airlock", "version": "0.1.0"}
    assert login["metadata"]["version"] == "1.3.0"
    assert login["metadata"]["uid"] == str(chain[-3].id)
    assert isinstance(login["time"], int) and login["time"] == int(chain[-3].occurred_at.timestamp() * 1000)
    assert (failed["status_id"], failed["status_detail"]) == (2, "failed: bad password")


def test_ocsf_model_call_is_api_activity_with_the_ai_operation_profile(org, chain):
    event = json.loads(ocsf.render(one_row(org, "model.call")))

    assert (event["class_uid"], event["category_uid"]) == (6003, 6)
    assert event["type_uid"] == 6003 * 100 + event["activity_id"]
    assert event["api"]["operation"] == "model.call"
    assert event["api"]["request"]["uid"] == "req-1"
    assert event["metadata"]["correlation_uid"] == SESSION_ID
    assert event["metadata"]["profiles"] == ["ai_operation"]
    assert event["ai_model"]["name"] == "sim-model"
    context = event["message_context"]
    assert (context["prompt_tokens"], context["completion_tokens"]) == (120, 33 + 5)
    assert context["total_tokens"] == 120 + 38
    assert event["unmapped"]["hash"] == chain[5].hash


def test_ocsf_model_call_reads_the_agent_loops_token_fields(org, agents_user):
    record(
        action="model.call",
        actor=agents_user,
        organization=org,
        data={"provider": "Local vLLM", "model": "qwen-coder", "input_tokens": 900, "output_tokens": 100},
    )
    event = json.loads(ocsf.render(one_row(org, "model.call")))

    assert event["ai_model"] == {"name": "qwen-coder", "ai_provider": "Local vLLM"}
    assert event["message_context"]["total_tokens"] == 1000


def test_ocsf_denied_action_is_a_failure_saying_denied(org, chain):
    event = json.loads(ocsf.render(one_row(org, "provider.deleted")))

    assert (event["status"], event["status_id"]) == ("Failure", 2)
    assert event["status_detail"].startswith("denied: =HYPERLINK")
    assert (event["activity_id"], event["type_uid"]) == (4, 600304)
    assert event["unmapped"]["data"] == {"note": "-2+3", "cmd": "@SUM(A1)"}


def test_since_and_until_select_a_time_range(org, chain):
    middle = chain[4].occurred_at
    later = chain[7].occurred_at

    lines = export_text(org, "jsonl", since=middle, until=later).splitlines()

    assert [json.loads(line)["sequence"] for line in lines] == [e.sequence for e in chain[4:7]]


def test_stream_stops_at_the_chain_head_it_started_from(org, owner, chain):
    export = export_stream_open(actor=owner, organization=org, params=ExportParams(format="jsonl"))
    record(action="prompt.submitted", actor=owner, organization=org)  # appended while the export runs

    lines = b"".join(export.chunks).decode().splitlines()

    assert [json.loads(line)["sequence"] for line in lines] == [e.sequence for e in chain]
    assert export.stats.row_count == len(chain)
    exported = AuditEvent.objects.get(organization=org, action="audit.exported")
    assert exported.sequence == export.upto_sequence + 1


def insert_synthetic_events(org, count: int) -> None:
    """Insert correctly chained events in bulk (like the benchmark), without record() and model instances."""
    fields = [f for f in AuditEvent._meta.concrete_fields]
    prepare = {
        f.attname: (lambda value, field=f: field.get_db_prep_save(value, connection))
        for f in fields
        if f.attname in ("id", "occurred_at", "data")
    }
    table = connection.ops.quote_name(AuditEvent._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    sql = f"INSERT INTO {table} ({columns}) VALUES ({', '.join(['%s'] * len(fields))})"
    data = normalize({"argv": ["pytest", "-q"], "exit": 0, "stdout_sha256": "0" * 64})
    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    template = {f.attname: f.get_default() for f in fields}
    template.update(
        organization_id=org.pk,
        action="workspace.command",
        outcome="success",
        actor_type="agent",
        actor_id="1",
        actor_display="agent acting for alice in session s-1",
        source_ip="10.0.0.7",
        session_id="s-1",
        data=data,
    )
    prev, batch = GENESIS_HASH, []
    with connection.cursor() as cursor:
        for sequence in range(1, count + 1):
            event = {
                **template,
                "id": uuid.uuid4(),
                "sequence": sequence,
                "occurred_at": start + dt.timedelta(milliseconds=sequence),
                "request_id": f"req-{sequence}",
                "prev_hash": prev,
            }
            event["hash"] = prev = chain_hash(prev, event_document(event))
            batch.append(
                [prepare[f.attname](event[f.attname]) if f.attname in prepare else event[f.attname] for f in fields]
            )
            if len(batch) == 5000:
                cursor.executemany(sql, batch)
                batch = []
        if batch:
            cursor.executemany(sql, batch)
    AuditChainHead.objects.update_or_create(organization=org, defaults={"sequence": count, "hash": prev})


def test_exporting_20000_events_reads_a_page_at_a_time_in_bounded_memory(org):
    insert_synthetic_events(org, 20_000)
    fetched: list[int] = []

    def counted(pages):
        for page in pages:
            fetched.append(len(page))
            yield page

    chunks = iter_export_bytes(FORMATS["jsonl"], counted(iter_value_pages(organization=org)), organization_slug="acme")
    first = next(chunks)
    assert fetched == [PAGE_SIZE]  # the first bytes go out after one page is read, not the table
    assert first.count(b"\n") == RENDER_ROWS
    for _ in chunks:  # the rest, untraced
        pass

    def peak_streaming(**range_: object) -> tuple[int, int]:
        pages = iter_value_pages(organization=org, **range_)
        tracemalloc.start()
        try:
            total = sum(len(chunk) for chunk in iter_export_bytes(FORMATS["jsonl"], pages, organization_slug=org.slug))
            return tracemalloc.get_traced_memory()[1], total
        finally:
            tracemalloc.stop()

    one_page_peak, _ = peak_streaming(upto_sequence=PAGE_SIZE)
    peak, total = peak_streaming()
    assert total > 20_000 * 400  # about 16 MB of JSON Lines went out
    # Constant memory: four times the rows, about the same peak as one page (holding them all would be ~4x).
    assert peak < one_page_peak * 1.5, f"peak {peak / 1e6:.1f} MB vs {one_page_peak / 1e6:.1f} MB for one page"
    assert peak < 64 * 1024 * 1024


def test_system_actor_exports_without_a_role(org, chain):
    export = export_stream_open(actor=SystemActor("cli:ops"), organization=org, params=ExportParams(format="cef"))

    assert len(b"".join(export.chunks).splitlines()) == len(chain)
