"""A recognisable key fed through every path (create, update, check, a failing call, errors) is found nowhere.

Not in any HTTP response, log record (every logger at DEBUG), audit row or CLI output: at most its last four
characters ("5b4a") appear.
"""

from __future__ import annotations

import io
import json
import logging

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from rest_framework.test import APIClient

from audit.models import AuditDestination, AuditEvent
from organizations.models import Role
from portal.crypto import encrypt_secret, secret_hint
from providers.checks import provider_check
from providers.clients import ModelCallError, stream_turn
from providers.models import LanguageModel, Provider
from providers.services import model_create, provider_create, provider_update
from providers.simulator import ModelSimulator
from tests.factories import UserFactory, make_member

CANARY = "sk-live-AIRLOCKCANARY-9f8e7d6c5b4a"
SECRET_PART = CANARY[:-4]  # everything but the last four characters, which may be shown
PROVIDERS = "/api/v1/orgs/acme/providers/"


@pytest.fixture
def every_log(caplog):
    """Capture every logger at DEBUG (including the SDKs' and httpx's, which the settings quiet)."""
    import anthropic  # noqa: F401 - create their loggers before we raise them to DEBUG
    import botocore  # noqa: F401
    import httpx2  # noqa: F401
    import openai  # noqa: F401

    caplog.set_level(logging.DEBUG)
    for name in list(logging.root.manager.loggerDict):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def assert_clean(*texts: str) -> None:
    for text in texts:
        assert SECRET_PART not in text, f"the key leaked: ...{text[max(0, text.find(SECRET_PART) - 80) :][:200]}"


def assert_no_leak_in_logs_and_audit(caplog) -> None:
    lines = []
    for record in caplog.records:
        lines.append(record.getMessage())
        lines.append(repr(record.args))
        if record.exc_info:
            lines.append(logging.Formatter().formatException(record.exc_info))
    assert_clean(*lines)
    assert_clean(json.dumps(list(AuditEvent.objects.values()), default=str))


def test_service_create_update_and_validation_errors_never_hold_the_key(org, owner, every_log):
    provider = provider_create(
        actor=owner, organization=org, name="P", kind="openai-compatible", base_url="http://x/v1", api_key=CANARY
    )
    provider_update(actor=owner, provider=provider, api_key=CANARY + "-new-5b4a")
    errors = []
    for bad in (CANARY + "\nX-Evil: 1", CANARY + " " + CANARY):
        with pytest.raises(ValidationError) as error:
            provider_update(actor=owner, provider=provider, api_key=bad)
        errors.append(str(error.value.message_dict))
    with pytest.raises(ValidationError) as error:
        provider_create(
            actor=owner,
            organization=org,
            name="Q",
            kind="openai-compatible",
            base_url="http://x/v1",
            extra_headers={"Authorization": f"Bearer {CANARY}"},
        )
    errors.append(str(error.value.message_dict))

    assert_clean(*errors)
    assert_no_leak_in_logs_and_audit(every_log)
    assert AuditEvent.objects.get(action="provider.key_rotated").data["after"].endswith("5b4a")


def test_api_create_rotate_read_check_and_errors_never_answer_with_the_key(org, owner, every_log):
    client = APIClient()
    client.force_authenticate(owner)
    bodies = []
    with ModelSimulator(api_key="sk-the-only-accepted-key-0000") as sim:
        created = client.post(
            PROVIDERS,
            {"name": "Sim", "kind": "openai-compatible", "base_url": sim.base_url, "api_key": CANARY},
            format="json",
        )
        assert created.status_code == 201
        pk = created.json()["id"]
        bodies.append(created.content.decode())
        bodies.append(client.patch(f"{PROVIDERS}{pk}/", {"api_key": CANARY}, format="json").content.decode())
        checked = client.post(f"{PROVIDERS}{pk}/check/", {}, format="json")
        assert checked.json()["ok"] is False and "401" in checked.content.decode()
        bodies.append(checked.content.decode())
    bodies.append(client.get(PROVIDERS).content.decode())
    bodies.append(client.get(f"{PROVIDERS}{pk}/").content.decode())
    for payload in (
        {"name": "Bad", "kind": "openai-compatible", "base_url": "http://x/v1", "api_key": CANARY + "\nX: 1"},
        {"name": "Bad", "kind": "openai-compatible", "base_url": f"http://user:{CANARY}@x/v1"},
        {"name": "Bad", "kind": "openai-compatible", "base_url": "http://x/v1", "api_key": {"k": CANARY}},
        {"name": "Bad", "kind": "soap", "api_key": CANARY, "extra_headers": {"x-api-key": CANARY}},
    ):
        response = client.post(PROVIDERS, payload, format="json")
        assert response.status_code == 400
        bodies.append(response.content.decode())

    assert_clean(*bodies)
    assert "5b4a" in bodies[0]
    assert_no_leak_in_logs_and_audit(every_log)


def test_cli_add_list_and_check_never_print_the_key(org, monkeypatch, every_log):
    monkeypatch.setattr("sys.stdin", io.StringIO(CANARY + "\n"))
    out = io.StringIO()
    with ModelSimulator(api_key="sk-the-only-accepted-key-0000") as sim:
        call_command(
            "providers",
            "add",
            "--org",
            "acme",
            "--name",
            "Sim",
            "--kind",
            "openai-compatible",
            "--base-url",
            sim.base_url,
            "--api-key-stdin",
            stdout=out,
            stderr=out,
        )
        call_command("providers", "list", "--org", "acme", stdout=out, stderr=out)
        with pytest.raises(CommandError) as error:
            call_command("providers", "check", "--org", "acme", stdout=out, stderr=out)
    monkeypatch.setattr("sys.stdin", io.StringIO(CANARY + " trailing words\n"))
    with pytest.raises(CommandError) as bad:
        call_command(
            "providers",
            "add",
            "--org",
            "acme",
            "--name",
            "Bad",
            "--kind",
            "openai",
            "--api-key-stdin",
            stdout=out,
            stderr=out,
        )
    call_command("providers", "rotate-keys", stdout=out, stderr=out)

    assert "401" in out.getvalue() and "5b4a" in out.getvalue()
    assert_clean(out.getvalue(), str(error.value), str(bad.value))
    assert_no_leak_in_logs_and_audit(every_log)


def test_admin_add_and_change_pages_never_render_the_key(org, every_log):
    staff = UserFactory(username="sam", is_staff=True)
    make_member(org, staff, Role.OWNER)
    browser = Client()
    browser.force_login(staff)

    added = browser.post(
        "/admin/providers/provider/add/",
        {
            "organization": org.pk,
            "name": "Gw",
            "kind": "openai-compatible",
            "base_url": "http://gw/v1",
            "new_api_key": CANARY,
        },
    )
    provider = Provider.objects.get(name="Gw")
    refused = browser.post(
        f"/admin/providers/provider/{provider.pk}/change/",
        {"name": "Gw", "base_url": "http://gw/v1", "new_api_key": CANARY + " two words"},
    )
    pages = [
        added.content.decode(),
        refused.content.decode(),
        browser.get(f"/admin/providers/provider/{provider.pk}/change/").content.decode(),
        browser.get("/admin/providers/provider/").content.decode(),
    ]

    assert added.status_code == 302 and refused.status_code == 200
    assert_clean(*pages)
    assert_no_leak_in_logs_and_audit(every_log)


def test_a_failing_model_call_whose_error_echoes_the_key_does_not_leak_it(org, settings, every_log):
    settings.PROVIDER_MAX_RETRIES = 0
    with ModelSimulator() as sim:
        provider = provider_create(
            actor=None, organization=org, name="Sim", kind="openai-compatible", base_url=sim.base_url, api_key=CANARY
        )
        model = model_create(
            actor=None, organization=org, provider=provider, identifier="m", display_name="M", context_limit=8000
        )
        sim.enqueue({"error": {"status": 400, "message": f"Bad request made with the key {CANARY}"}})
        sim.enqueue({"error": {"status": 500, "message": f"Internal error; Authorization: Bearer {CANARY}"}})
        messages = []
        for _ in range(2):
            with pytest.raises(ModelCallError) as error:
                _drain(model)
            messages.append(str(error.value))

    assert_clean(*messages)
    assert any(record.name.startswith(("openai", "httpx")) for record in every_log.records), "SDK logs were captured"
    assert_no_leak_in_logs_and_audit(every_log)


def _drain(model: LanguageModel) -> None:
    import asyncio

    async def consume() -> None:
        async for _ in stream_turn(model=model, system="", messages=[{"role": "user", "content": "hi"}], tools=[]):
            pass

    asyncio.run(consume())


def test_a_check_that_hits_an_undecryptable_key_says_what_to_do_without_the_key(org, owner, settings, every_log):
    from cryptography.fernet import Fernet

    provider = provider_create(
        actor=None,
        organization=org,
        name="P",
        kind="openai-compatible",
        base_url="http://127.0.0.1:9/v1",
        api_key=CANARY,
    )
    settings.AIRLOCK_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]

    result = provider_check(actor=owner, provider=provider)

    assert not result.ok and "enter the API key again" in result.steps[0].detail
    assert_clean(result.summary, json.dumps(result.as_dict()))
    assert_no_leak_in_logs_and_audit(every_log)


def test_rotating_audit_destination_secrets_never_writes_them(org, every_log):
    AuditDestination.objects.create(
        organization=org,
        name="siem",
        kind="splunk-hec",
        url="https://siem/services/collector",
        secret_encrypted=encrypt_secret(CANARY),
        secret_hint=secret_hint(CANARY),
    )
    out = io.StringIO()

    call_command("providers", "rotate-keys", stdout=out)

    assert "1 audit destination secret(s)" in out.getvalue()
    assert AuditEvent.objects.get(action="destination.key_rotated").data["after"] == "****5b4a"
    assert_clean(out.getvalue())
    assert_no_leak_in_logs_and_audit(every_log)
