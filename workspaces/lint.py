"""`templates lint`: what would stop an organization's agents from choosing or starting its templates well.

Errors: a template whose backend cannot run on this host (bubblewrap missing, no user namespaces), two
enabled templates the agent cannot tell apart (the same description). Warnings: a template on the local
backend (not a sandbox), an organization with no enabled template (its agents get the deployment's
default backend).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings

from organizations.models import Organization
from workspaces.backends.bubblewrap import sandbox_problem
from workspaces.models import WorkspaceBackend, WorkspaceTemplate

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Finding:
    """One problem lint found: where, how serious, and what to do about it."""

    organization: str
    template: str | None
    severity: str
    message: str

    def __str__(self) -> str:
        where = f"{self.organization}/{self.template}" if self.template else self.organization
        return f"{where}: {self.severity}: {self.message}"


def _backend_problem(backend: str, problems: dict[str, str | None]) -> str | None:
    if backend not in problems:
        problems[backend] = sandbox_problem() if backend == WorkspaceBackend.BUBBLEWRAP else None
    return problems[backend]


def _normalized(text: str) -> str:
    return " ".join(text.lower().split())


def lint_templates(organizations: Iterable[Organization]) -> list[Finding]:
    """Findings for the templates of these organizations, errors and warnings, in organization and name order."""
    organizations = list(organizations)
    templates = WorkspaceTemplate.objects.filter(organization__in=organizations).order_by("organization_id", "name")
    by_org: dict[int, list[WorkspaceTemplate]] = {organization.pk: [] for organization in organizations}
    for template in templates:
        by_org[template.organization_id].append(template)
    problems: dict[str, str | None] = {}
    findings: list[Finding] = []
    for organization in sorted(organizations, key=lambda org: org.slug):
        enabled = [template for template in by_org[organization.pk] if template.is_enabled]
        if not enabled:
            default = settings.WORKSPACE_DEFAULT_BACKEND
            note = " (no sandbox)" if default == WorkspaceBackend.LOCAL else ""
            findings.append(
                Finding(
                    organization.slug,
                    None,
                    WARNING,
                    f"no enabled template: its agents run commands on the deployment's default backend, "
                    f"{default}{note}. Add one with `manage.py templates add`.",
                )
            )
        seen: dict[str, str] = {}
        for template in enabled:
            problem = _backend_problem(template.backend, problems)
            if problem:
                findings.append(Finding(organization.slug, template.name, ERROR, problem))
            if template.backend == WorkspaceBackend.LOCAL:
                findings.append(
                    Finding(
                        organization.slug,
                        template.name,
                        WARNING,
                        "the local backend is not a sandbox: commands run as Airlock's own user on this host, with "
                        "its network. Use the bubblewrap backend unless every member may have a shell here.",
                    )
                )
            key = _normalized(template.description)
            if key in seen:
                findings.append(
                    Finding(
                        organization.slug,
                        template.name,
                        ERROR,
                        f"has the same description as {seen[key]!r}: the agent chooses by description and cannot "
                        "tell them apart. Say what each is for.",
                    )
                )
            else:
                seen[key] = template.name
    return findings
