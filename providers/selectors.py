"""Reads of providers and models, always scoped to the requesting user and organization."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404

from organizations.models import Organization
from organizations.permissions import has_permission, roles_for
from providers.models import LanguageModel, Provider

User = AbstractBaseUser | AnonymousUser


def models_for_user(*, user: User, organization: Organization) -> QuerySet[LanguageModel]:
    """Models the user may run agents with in the organization (agents users and owners), in one query."""
    return (
        LanguageModel.objects.for_user(user, "model.use").filter(organization=organization).select_related("provider")
    )


def models_visible_to(*, user: User, organization: Organization) -> QuerySet[LanguageModel]:
    """Models the user may see listed in the organization (every member), in one query."""
    return (
        LanguageModel.objects.for_user(user, "model.view").filter(organization=organization).select_related("provider")
    )


def model_default(*, organization: Organization) -> LanguageModel | None:
    """The organization's default model, if it has one."""
    return LanguageModel.objects.filter(organization=organization, is_default=True).select_related("provider").first()


def model_for_user(*, user: User, organization: Organization, model_id: Any) -> LanguageModel:
    """One model the user may use; Http404 when it is missing or another organization's.

    A member who can see the model but may not run agents gets PermissionDenied naming the role to ask for.
    """
    try:
        pk = int(model_id)
    except (TypeError, ValueError):
        raise Http404("No such model.") from None
    model = models_for_user(user=user, organization=organization).filter(pk=pk).first()
    if model is not None:
        return model
    if models_visible_to(user=user, organization=organization).filter(pk=pk).exists():
        raise PermissionDenied(
            f"Using a model needs one of the roles {role_names('model.use')} in {organization.slug}."
        )
    raise Http404("No such model.")


def providers_for_user(*, user: User, organization: Organization) -> QuerySet[Provider]:
    """Providers of the organization the user may see (owners and auditors), in one query."""
    return Provider.objects.for_user(user, "provider.view").filter(organization=organization)


def role_names(action: str) -> str:
    """The roles that allow an action, as a reader would type them: "agents-user, owner"."""
    return ", ".join(sorted(str(role) for role in roles_for(action)))


def can_use_models(*, user: User, organization: Organization) -> bool:
    """Whether the user may run agents with the organization's models."""
    return has_permission(user, organization, "model.use")
