"""`make run`'s bootstrap: the demo organization, its owner, a model, and a sandbox template where the host has one."""

from __future__ import annotations

import pytest
from django.core.management import call_command

import workspaces.backends.bubblewrap as bubblewrap
from organizations.models import Organization
from providers.models import LanguageModel
from tests.sandbox import let_sandbox_reach
from workspaces.models import WorkspaceTemplate


@pytest.fixture(autouse=True)
def no_vendor(monkeypatch, settings, tmp_path):
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    settings.WORKSPACES_ROOT = let_sandbox_reach(tmp_path / "workspaces")


@pytest.mark.django_db
def test_bootstrap_creates_the_demo_once_with_a_sandbox_template_where_bubblewrap_works(capsys):
    call_command("bootstrap_demo")
    call_command("bootstrap_demo")

    out = capsys.readouterr().out
    organization = Organization.objects.get(slug="demo")
    assert LanguageModel.objects.get(organization=organization, is_default=True).provider.is_simulator
    if bubblewrap.sandbox_problem() is not None:
        pytest.skip("bubblewrap cannot start a sandbox here: see scripts/install-system-packages.sh bubblewrap")
    template = WorkspaceTemplate.objects.get(organization=organization)
    assert (template.name, template.backend) == ("sandbox", "bubblewrap")
    assert out.count("Workspace template 'sandbox' created") == 1 and out.count("password:") == 1


@pytest.mark.django_db
def test_without_bubblewrap_the_demo_says_its_commands_are_not_sandboxed(monkeypatch, capsys):
    monkeypatch.setattr(bubblewrap, "_bwrap_path", lambda: None)

    call_command("bootstrap_demo")

    assert not WorkspaceTemplate.objects.exists()
    out = capsys.readouterr().out
    assert "bubblewrap is not installed on this host" in out and "(the local backend: not a sandbox)" in out
