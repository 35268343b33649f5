"""`manage.py providers ...` and `manage.py models ...`: scripted set-up, errors as CommandError, never the key."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from audit.models import AuditEvent
from portal.crypto import decrypt_secret
from providers.models import LanguageModel, Provider
from providers.services import provider_create
from providers.simulator import ModelSimulator
from tests.providers.conftest import SECRET_KEY

CLI_KEY = "sk-live-CLIENTERED-key-2468"


def run(*args: str, stdin: str | None = None, monkeypatch=None) -> str:
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue() + err.getvalue()


def test_providers_add_reads_the_key_from_stdin_and_prints_only_its_hint(org, monkeypatch):
    output = run(
        "providers",
        "add",
        "--org",
        "acme",
        "--name",
        "Gateway",
        "--kind",
        "openai-compatible",
        "--base-url",
        "https://gw.internal/v1",
        "--api-key-stdin",
        "--header",
        "X-Team: ml",
        stdin=CLI_KEY + "\n",
        monkeypatch=monkeypatch,
    )

    provider = Provider.objects.get(name="Gateway")
    assert decrypt_secret(provider.api_key_encrypted) == CLI_KEY and provider.extra_headers == {"X-Team": "ml"}
    assert "****2468" in output and "CLIENTERED" not in output
    event = AuditEvent.objects.get(action="provider.created")
    assert event.actor_display.startswith("cli:") and "CLIENTERED" not in json.dumps(event.data)


def test_providers_add_bedrock_with_ambient_credentials(org):
    run(
        "providers",
        "add",
        "--org",
        "acme",
        "--name",
        "AWS",
        "--kind",
        "bedrock",
        "--region",
        "eu-west-1",
        "--ambient-credentials",
    )

    provider = Provider.objects.get(name="AWS")
    assert provider.use_ambient_credentials and provider.region == "eu-west-1"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--org", "nope", "--name", "X", "--kind", "openai"], "No organization with the slug 'nope'"),
        (["--org", "acme", "--name", "X", "--kind", "soap"], "Unknown kind 'soap'"),
        (["--org", "acme", "--name", "X", "--kind", "openai-compatible", "--base-url", "ftp://x"], "http://"),
        (["--org", "acme", "--name", "X", "--kind", "anthropic"], "needs an API key"),
        (
            [
                "--org",
                "acme",
                "--name",
                "X",
                "--kind",
                "openai-compatible",
                "--base-url",
                "http://x/v1",
                "--header",
                "no colon",
            ],
            "'Name: value'",
        ),
        (
            [
                "--org",
                "acme",
                "--name",
                "X",
                "--kind",
                "openai-compatible",
                "--base-url",
                "http://x/v1",
                "--header",
                "Authorization: Bearer k",
            ],
            "carries a credential",
        ),
    ],
)
def test_providers_add_refuses_bad_input_with_a_command_error(org, args, words):
    with pytest.raises(CommandError, match=None) as error:
        run("providers", "add", *args)

    assert words in str(error.value)
    assert not Provider.objects.exists()


def test_an_empty_stdin_key_is_refused(org, monkeypatch):
    with pytest.raises(CommandError, match="standard input was empty"):
        run(
            "providers",
            "add",
            "--org",
            "acme",
            "--name",
            "X",
            "--kind",
            "openai",
            "--api-key-stdin",
            stdin="",
            monkeypatch=monkeypatch,
        )


def test_providers_list_shows_the_hint_never_the_key(org):
    provider_create(
        actor=None,
        organization=org,
        name="vLLM",
        kind="openai-compatible",
        base_url="http://vllm:8000/v1",
        api_key=SECRET_KEY,
    )

    output = run("providers", "list", "--org", "acme")

    assert "vLLM" in output and "****7890" in output and "SECRETKEY" not in output


def test_models_add_and_list(org):
    provider_create(actor=None, organization=org, name="vLLM", kind="openai-compatible", base_url="http://vllm:8000/v1")

    added = run(
        "models",
        "add",
        "--org",
        "acme",
        "--provider",
        "vLLM",
        "--identifier",
        "llama3",
        "--display-name",
        "Llama 3",
        "--context-limit",
        "8192",
        "--default",
        "--max-output-tokens",
        "2048",
        "--input-price",
        "0.2",
        "--output-price",
        "0.6",
    )
    listing = run("models", "list", "--org", "acme")

    model = LanguageModel.objects.get(identifier="llama3")
    assert (
        model.is_default and model.max_output_tokens == 2048 and str(model.output_price_per_mtok.normalize()) == "0.6"
    )
    assert "(default)" in added and "llama3" in listing and "*" in listing


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--provider", "nope", "--identifier", "x", "--context-limit", "10"], "no provider named 'nope'"),
        (["--provider", "vLLM", "--identifier", "x", "--context-limit", "0"], "whole number above 0"),
        (
            ["--provider", "vLLM", "--identifier", "x", "--context-limit", "10", "--max-output-tokens", "10"],
            "below the context limit",
        ),
        (["--provider", "vLLM", "--identifier", "x", "--context-limit", "10", "--input-price", "-2"], "at least 0"),
    ],
)
def test_models_add_refuses_bad_input_with_a_command_error(org, args, words):
    provider_create(actor=None, organization=org, name="vLLM", kind="openai-compatible", base_url="http://vllm:8000/v1")

    with pytest.raises(CommandError) as error:
        run("models", "add", "--org", "acme", *args)

    assert words in str(error.value)


def test_providers_check_prints_each_step_and_fails_when_one_provider_fails(org, other_org):
    with ModelSimulator() as sim:
        provider_create(actor=None, organization=org, name="Good", kind="openai-compatible", base_url=sim.base_url)
        provider_create(
            actor=None,
            organization=other_org,
            name="Bad",
            kind="openai-compatible",
            base_url="http://nonexistent.invalid/v1",
        )
        out = io.StringIO()
        with pytest.raises(CommandError, match="1 of 2 provider check"):
            call_command("providers", "check", stdout=out)
        only_acme = run("providers", "check", "--org", "acme")

    text = out.getvalue()
    assert "acme/Good" in text and "globex/Bad" in text
    assert "FAIL dns" in text and "DNS lookup of nonexistent.invalid failed" in text
    assert "ok   api" in only_acme and "1 provider check(s) passed" in only_acme


def test_providers_check_of_an_unknown_name_is_a_command_error(org):
    with pytest.raises(CommandError, match="No provider named 'nope' in acme"):
        run("providers", "check", "--org", "acme", "nope")


def test_rotate_keys_reports_counts_and_keeps_keys_usable(org, settings):
    from cryptography.fernet import Fernet

    provider_create(
        actor=None,
        organization=org,
        name="vLLM",
        kind="openai-compatible",
        base_url="http://vllm:8000/v1",
        api_key=SECRET_KEY,
    )
    settings.AIRLOCK_ENCRYPTION_KEYS = [Fernet.generate_key().decode(), *settings.AIRLOCK_ENCRYPTION_KEYS]

    output = run("providers", "rotate-keys")

    assert "re-encrypted 1 provider key(s) and 0 audit destination secret(s) in 1 organization(s)" in output
    settings.AIRLOCK_ENCRYPTION_KEYS = settings.AIRLOCK_ENCRYPTION_KEYS[:1]
    assert decrypt_secret(Provider.objects.get().api_key_encrypted) == SECRET_KEY


def test_rotate_keys_with_a_missing_old_key_changes_nothing_and_says_why(org, settings):
    from cryptography.fernet import Fernet

    provider_create(
        actor=None,
        organization=org,
        name="vLLM",
        kind="openai-compatible",
        base_url="http://vllm:8000/v1",
        api_key=SECRET_KEY,
    )
    before = Provider.objects.get().api_key_encrypted
    settings.AIRLOCK_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]

    with pytest.raises(CommandError, match="acme/vLLM: its secret cannot be decrypted"):
        run("providers", "rotate-keys")

    assert Provider.objects.get().api_key_encrypted == before
