"""Workspace reads, always scoped to the requesting user and organization."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Q, QuerySet

from organizations.models import MembershipRole, Organization
from organizations.permissions import roles_for
from workspaces.models import CommandRun, Workspace, WorkspaceTemplate


def workspaces_for_user(*, user: AbstractBaseUser | AnonymousUser, organization: Organization) -> QuerySet[Workspace]:
    """The organization's workspaces the user may see: all as owner/auditor, else their own as an agents user."""
    in_org = Workspace.objects.filter(organization_id=organization.pk)
    if not user.is_authenticated:
        return in_org.none()
    if user.is_superuser:
        return in_org
    grants = MembershipRole.objects.filter(membership__user_id=user.pk, membership__organization_id=organization.pk)
    sees_all = grants.filter(role__in=roles_for("session.view_all")).values("membership__organization_id")
    runs_agents = grants.filter(role__in=roles_for("session.create")).values("membership__organization_id")
    return in_org.filter(Q(organization_id__in=sees_all) | Q(owner_id=user.pk, organization_id__in=runs_agents))


def command_runs_for_user(
    *, user: AbstractBaseUser | AnonymousUser, organization: Organization, workspace: Workspace | None = None
) -> QuerySet[CommandRun]:
    """Command runs in the workspaces the user may see, optionally of one workspace, oldest first."""
    runs = CommandRun.objects.filter(
        organization_id=organization.pk,
        workspace__in=workspaces_for_user(user=user, organization=organization).values("pk"),
    )
    if workspace is not None:
        runs = runs.filter(workspace_id=workspace.pk)
    return runs.order_by("started_at")


def templates_for_user(
    *, user: AbstractBaseUser | AnonymousUser, organization: Organization
) -> QuerySet[WorkspaceTemplate]:
    """The organization's templates, for any of its members (they see what their agents may start)."""
    return WorkspaceTemplate.objects.for_user(user).filter(organization_id=organization.pk).order_by("name")


def organization_templates(*, organization: Organization) -> list[WorkspaceTemplate]:
    """All of the organization's templates, enabled or not, by name (one query): the agent may start the enabled
    ones, and an organization that has any never falls back to the deployment's default backend."""
    return list(WorkspaceTemplate.objects.filter(organization_id=organization.pk).order_by("name"))
