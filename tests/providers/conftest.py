"""Fixtures for the providers tests: a live model simulator on loopback, providers pointing at it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from organizations.models import Organization
from providers.clients import ToolSpec
from providers.models import LanguageModel
from providers.services import model_create, provider_create
from providers.simulator import ModelSimulator

SECRET_KEY = "sk-test-SECRETKEY-1234567890"

EXECUTE = ToolSpec(
    name="execute",
    description="Run a shell command in the workspace.",
    parameters={"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
)


@pytest.fixture
def keyed_simulator() -> Iterator[ModelSimulator]:
    """A simulator that only answers requests carrying SECRET_KEY."""
    with ModelSimulator(api_key=SECRET_KEY) as sim:
        yield sim


@pytest.fixture
def no_retries(settings) -> None:
    """Fail on the first error instead of letting the SDK retry (keeps error tests fast)."""
    settings.PROVIDER_MAX_RETRIES = 0


def simulated_model(org: Organization, base_url: str, *, api_key: str = "", name: str = "Simulator") -> LanguageModel:
    """A provider (created through the service, so the key is encrypted) and a model on it."""
    provider = provider_create(
        actor=None, organization=org, name=name, kind="openai-compatible", base_url=base_url, api_key=api_key
    )
    return model_create(
        actor=None,
        organization=org,
        provider=provider,
        identifier="sim-model",
        display_name="Sim model",
        context_limit=32_000,
    )
