"""Batched chaining stores an event's data exactly as immediate chaining does, secrets masked, whatever the data.

On PostgreSQL a batched writer sends the data as JSON text prepared in one pass when nothing in it needs
masking or rewriting (`prepare_event_json`); these tests hold that shortcut to the result of the full path.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from collections.abc import Iterator

import pytest

from audit import chaining, record
from audit.chain import normalize, storable_json
from audit.context import bound
from audit.models import AuditEvent, AuditPendingEvent, AuditSettings, ContentPolicy
from audit.policy import invalidate_policy, prepare_event_data, prepare_event_json
from audit.secrets import SECRET_KEYS, SECRET_PATTERNS, may_hold_secrets
from audit.services import SystemActor
from audit.verify import verify_chain
from organizations.models import Organization
from tests.factories import OrganizationFactory

pytestmark = pytest.mark.django_db(transaction=True)

SAMPLES = {
    "plain": {"provider": "sim", "tokens": {"in": 1200, "out": 3}, "cost": 0.0012, "response_text": "Done."},
    "anthropic-key-in-text": {"response_text": "use sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123 now"},
    "secret-key-name-any-case": {"config": {"Api_Key": "hunter2-hunter2", "region": "eu"}},
    "bearer-in-a-list": {"messages": [{"content": "Authorization: Bearer abcdefghijk123456"}]},
    "password-in-url": {"url": "postgres://app:s3cretpass@db.internal/x"},
    "private-key": {"output_tail": "-----BEGIN RSA PRIVATE KEY-----\nMIIEabc\n-----END RSA PRIVATE KEY-----"},
    "non-finite-floats": {"x": float("nan"), "y": float("inf"), "z": float("-inf")},
    "nul-character": {"output_head": "a\x00b"},
    "lone-surrogate": {"output_head": "a\ud800b"},
    "big-float-and-negative-zero": {"big": 1e16, "bigger": 3.5e20, "neg": -0.0, "small": 0.1},
    "types-json-lacks": {
        "when": dt.datetime(2026, 11, 29, 3, 0, tzinfo=dt.UTC),
        "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "pair": (1, 2),
        "amount": decimal.Decimal("1.50"),
    },
    "non-ascii": {"text": "Grüße, 東京 🚀"},
    "integer-keys": {1: "one", 2: {"3": "three"}},
    "backslash-u0000-typed": {"text": "a literal \\u0000 in a path"},
    "secrets-in-values-stored-as-text": {
        "raw": b"password=hunter2hunter2",
        "tags": {"sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123"},
        "api_key": b"abc-def-ghi-jkl",
    },
}

POLICIES = {
    "full": (ContentPolicy.FULL, []),
    "redacted": (ContentPolicy.REDACTED, [r"PATIENT-\d+", "eu"]),
    "digest": (ContentPolicy.DIGEST, []),
}


@pytest.fixture
def twin_orgs() -> tuple[Organization, Organization]:
    """Two organizations: one chained immediately, one batched."""
    return OrganizationFactory(slug="immediate"), OrganizationFactory(slug="batched")


@pytest.fixture(autouse=True)
def drained() -> Iterator[None]:
    yield
    assert chaining.wait_until_chained(30), "a chainer thread hung"


def stored(organization: Organization, mode: str, action: str, data: dict, settings) -> AuditEvent:
    """Record one event in the given chaining mode and return it as chained."""
    settings.AUDIT_CHAINING = mode
    pending = record(action=action, actor=SystemActor(), organization=organization, data=data)
    if mode == "batched":
        assert chaining.wait_until_chained(10)
        return AuditEvent.objects.get(pk=pending.event_id)
    return AuditEvent.objects.get(pk=pending.pk)


@pytest.mark.parametrize("sample", SAMPLES.values(), ids=SAMPLES.keys())
@pytest.mark.parametrize("policy", POLICIES.values(), ids=POLICIES.keys())
def test_batched_and_immediate_chaining_store_the_same_data(twin_orgs, sample, policy, settings):
    for organization in twin_orgs:
        AuditSettings.objects.create(organization=organization, content_policy=policy[0], redaction_patterns=policy[1])
    invalidate_policy()
    immediate_org, batched_org = twin_orgs

    immediate = stored(immediate_org, "immediate", "model.call", sample, settings)
    batched = stored(batched_org, "batched", "model.call", sample, settings)

    assert batched.data == immediate.data
    assert verify_chain(organization=batched_org).ok and verify_chain(organization=immediate_org).ok


def test_secrets_in_values_stored_as_their_text_are_masked(org):
    event = record(
        action="model.call",
        actor=SystemActor(),
        organization=org,
        data={
            "raw": b"password=hunter2hunter2",
            "tags": {"sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123"},
            "api_key": b"x",
        },
    )
    text = str(AuditEvent.objects.get(pk=event.pk).data)
    assert "hunter2" not in text and "abcdefghijklmnopqrstuvwxyz" not in text and "b'x'" not in text
    assert "[REDACTED:password]" in text and "[REDACTED:anthropic_key]" in text and "[REDACTED:secret]" in text


def test_a_secret_never_reaches_the_pending_table_or_the_chain(org, settings):
    secret = "sk-ant-api03-CANARYcanaryCANARYcanary0123"
    settings.AUDIT_CHAINING = "batched"
    pending = record(action="model.call", actor=SystemActor(), organization=org, data={"response_text": secret})
    assert secret not in str(pending.data)
    assert chaining.wait_until_chained(10)
    text = str(AuditEvent.objects.get(pk=pending.event_id).data)
    assert secret not in text and "[REDACTED:anthropic_key]" in text


def test_every_trigger_and_every_secret_key_sends_the_data_down_the_masking_path():
    for pattern in SECRET_PATTERNS:
        for trigger in pattern.triggers:
            assert may_hold_secrets(storable_json({"text": f"x {trigger} y"})), trigger
            assert may_hold_secrets(storable_json({"text": f"x {trigger.upper()} y"})) or trigger != trigger.lower()
    for name in SECRET_KEYS:
        assert may_hold_secrets(storable_json({name.upper(): "v"})), name
    assert not may_hold_secrets(storable_json({"provider": "sim", "response_text": "Here is the change."}))


@pytest.mark.parametrize(
    "value", [float("nan"), "a\x00b", "a\ud800b", {1: "a", "b": 2}], ids=["nan", "nul", "surrogate", "mixed-keys"]
)
def test_storable_json_leaves_what_normalize_rewrites_to_the_full_path(value):
    assert storable_json({"v": value}) is None


@pytest.mark.postgres
@pytest.mark.parametrize(
    "moment",
    [
        dt.datetime(2026, 11, 29, 3, 0, tzinfo=dt.UTC),
        dt.datetime(2026, 1, 2, 3, 4, 5, 999999, tzinfo=dt.UTC),
        dt.datetime(2026, 6, 30, 23, 59, 59, 7, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
    ],
    ids=["whole-second", "last-microsecond", "other-time-zone"],
)
def test_postgresql_formats_the_time_as_the_hash_rule_does(moment):
    from django.db import connection

    from audit.chain import PG_TIME_FORMAT, format_time

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT to_char(%s::timestamptz AT TIME ZONE 'UTC', '{PG_TIME_FORMAT}')", [moment])
        assert cursor.fetchone()[0] == format_time(moment)


def test_the_returned_pending_event_holds_what_its_row_holds(org, owner, settings):
    settings.AUDIT_CHAINER = "process"  # nothing chains it away before it is read back
    settings.AUDIT_CHAINING = "batched"
    with bound(request_id="req-9", source_ip="10.0.0.9", user_agent="pytest", auth_method="session"):
        pending = record(action="prompt.submitted", actor=owner, organization=org, target=org, data={"text": "hi"})

    row = AuditPendingEvent.objects.get(pk=pending.pk)
    fields = [field.attname for field in AuditPendingEvent._meta.concrete_fields]
    assert {name: getattr(pending, name) for name in fields} == {name: getattr(row, name) for name in fields}
    assert not pending._state.adding
    pending.refresh_from_db()  # an ordinary instance of its row
    assert (pending.action, pending.actor_display) == ("prompt.submitted", owner.get_username())


@pytest.mark.parametrize("sample", SAMPLES.values(), ids=SAMPLES.keys())
@pytest.mark.parametrize("policy", POLICIES.values(), ids=POLICIES.keys())
def test_the_one_pass_json_holds_what_the_full_path_stores(org, sample, policy):
    """On any database: the text a batched PostgreSQL writer sends stands for the value every other writer stores."""
    AuditSettings.objects.create(organization=org, content_policy=policy[0], redaction_patterns=policy[1])
    invalidate_policy()

    _value, text = prepare_event_json(organization_id=org.pk, action="model.call", data=sample)

    full = normalize(prepare_event_data(organization_id=org.pk, action="model.call", data=sample))
    assert json.loads(text) == full
