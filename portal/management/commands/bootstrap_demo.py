"""Create the demo organization, its owner and a provider, once (used by `make run`)."""

from __future__ import annotations

import os
import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from audit.services import SystemActor
from organizations.models import Organization, Role
from organizations.services import membership_grant_roles, organization_create
from providers.models import Provider
from providers.services import model_create, provider_create
from workspaces.backends.bubblewrap import sandbox_problem
from workspaces.models import WorkspaceTemplate
from workspaces.services import template_create

DEMO_SLUG = "demo"
DEMO_OWNER = "owner"
DEMO_TEMPLATE = "sandbox"
DEMO_TEMPLATE_DESCRIPTION = (
    "This server's Debian tools (shell, coreutils, Python 3, git where installed) in a bubblewrap sandbox: "
    "no network, a read-only system, the workspace at /workspace kept between commands."
)


def _provider_from_environment() -> dict[str, Any]:
    """Which provider to configure: a vendor when its key or URL is set, else the offline simulator."""
    if os.environ.get("OPENAI_BASE_URL"):
        return {
            "name": "OpenAI-compatible",
            "base_url": os.environ["OPENAI_BASE_URL"],
            "api_key": os.environ.get("OPENAI_API_KEY", ""),
            "model": os.environ.get("AIRLOCK_DEMO_MODEL", ""),
        }
    if os.environ.get("OPENAI_API_KEY"):
        return {
            "name": "OpenAI",
            "base_url": "https://api.openai.com/v1",
            "api_key": os.environ["OPENAI_API_KEY"],
            "model": os.environ.get("AIRLOCK_DEMO_MODEL", "gpt-4o-mini"),
        }
    if os.environ.get("ANTHROPIC_API_KEY"):
        # Anthropic's OpenAI-compatible endpoint; the native Messages client comes with the providers issue.
        return {
            "name": "Anthropic",
            "base_url": "https://api.anthropic.com/v1/",
            "api_key": os.environ["ANTHROPIC_API_KEY"],
            "model": os.environ.get("AIRLOCK_DEMO_MODEL", "claude-sonnet-4-5"),
        }
    return {
        "name": "Offline simulator",
        "base_url": os.environ.get("AIRLOCK_SIMULATOR_URL", "http://127.0.0.1:8765/v1"),
        "api_key": "",
        "model": "airlock-simulator",
        "is_simulator": True,
    }


class Command(BaseCommand):
    """Idempotent: creates what is missing, prints the owner's password only when it creates the owner."""

    help = "Create the demo organization 'demo', its owner account and a model provider (used by `make run`)."

    def handle(self, *args: Any, **options: Any) -> None:
        actor = SystemActor(name="bootstrap")
        User = get_user_model()
        with transaction.atomic():
            password = None
            owner = User.objects.filter(username=DEMO_OWNER).first()
            if owner is None:
                password = secrets.token_urlsafe(12)
                owner = User.objects.create_superuser(username=DEMO_OWNER, email="", password=password)
            organization = Organization.objects.filter(slug=DEMO_SLUG).first()
            if organization is None:
                organization = organization_create(actor=actor, slug=DEMO_SLUG, name="Demo", owner=owner)
                membership = organization.memberships.get(user=owner)
                membership_grant_roles(actor=actor, membership=membership, roles=[Role.AGENTS_USER])
            config = _provider_from_environment()
            if not Provider.objects.filter(organization=organization, name=config["name"]).exists():
                provider = provider_create(
                    actor=actor,
                    organization=organization,
                    name=config["name"],
                    kind="openai-compatible",
                    base_url=config["base_url"],
                    api_key=config["api_key"],
                    is_simulator=config.get("is_simulator", False),
                )
                if config["model"]:
                    model_create(
                        actor=actor,
                        organization=organization,
                        provider=provider,
                        identifier=config["model"],
                        display_name=config["name"] + ": " + config["model"],
                        context_limit=128_000,
                        is_default=True,
                    )
            sandbox_note = self._demo_template(organization, actor)
        if sandbox_note:
            self.stdout.write(sandbox_note)
        if password:
            self.stdout.write(
                self.style.SUCCESS(
                    f"\nDemo owner account created (shown once):\n  username: {DEMO_OWNER}\n  password: {password}\n"
                )
            )
        else:
            self.stdout.write(f"Demo organization '{DEMO_SLUG}' ready (owner account '{DEMO_OWNER}' already existed).")

    def _demo_template(self, organization: Organization, actor: SystemActor) -> str:
        """A bubblewrap template for the demo's agent where this host can run one; what was done, in words."""
        if WorkspaceTemplate.objects.filter(organization=organization).exists():
            return ""
        problem = sandbox_problem()
        if problem is not None:
            where = (
                "in a plain directory (the local backend: not a sandbox)"
                if settings.WORKSPACE_DEFAULT_BACKEND == "local"
                else "nowhere until bubblewrap can start"
            )
            return f"No workspace sandbox on this host ({problem}) The demo agent runs its commands {where}."
        template_create(
            actor=actor, organization=organization, name=DEMO_TEMPLATE, description=DEMO_TEMPLATE_DESCRIPTION
        )
        return (
            f"Workspace template {DEMO_TEMPLATE!r} created: the demo agent runs its commands in a bubblewrap sandbox."
        )
