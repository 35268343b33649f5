"""Reads of providers and models, always scoped to the requesting user and organization."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import PermissionDenied
from django.db.models import BooleanField, CharField, Exists, ExpressionWrapper, OuterRef, Q, QuerySet
from django.db.models.functions import Cast
from django.http import Http404

from organizations.models import Organization
from organizations.permissions import has_permission, role_names
from organizations.tenancy import organizations_for_user
from providers.models import LanguageModel, Provider

User = AbstractBaseUser | AnonymousUser


def _granted(user: User) -> Q:
    """Models the user holds `use_languagemodel` on, directly or through a group (two EXISTS subqueries)."""
    from guardian.models import GroupObjectPermission, UserObjectPermission

    if not user.is_authenticated:
        return Q(pk__in=[])
    grant = {
        "permission__codename": "use_languagemodel",
        "permission__content_type__app_label": "providers",
        "permission__content_type__model": "languagemodel",
    }
    # guardian stores the object's pk as text: compare as text (casting object_pk to a number could fail on
    # PostgreSQL for other models' uuid pks, whatever the filter order).
    model_pk = Cast(OuterRef("pk"), CharField())
    direct = UserObjectPermission.objects.filter(user_id=user.pk, object_pk=model_pk, **grant)
    via_group = GroupObjectPermission.objects.filter(group__user=user.pk, object_pk=model_pk, **grant)
    return Q(Exists(direct)) | Q(Exists(via_group))


def usable_filter(user: User) -> Q:
    """What a model must be for a user with `model.use` in its organization: enabled, and open or granted."""
    if getattr(user, "is_superuser", False):
        return Q(is_enabled=True)
    return Q(is_enabled=True) & (Q(restricted_access=False) | _granted(user))


def models_for_user(*, user: User, organization: Organization) -> QuerySet[LanguageModel]:
    """Enabled models the user may run agents with (agents users and owners; restricted ones if granted), one query."""
    return (
        LanguageModel.objects.for_user(user, "model.use")
        .filter(organization=organization)
        .filter(usable_filter(user))
        .select_related("provider")
    )


def models_visible_to(*, user: User, organization: Organization) -> QuerySet[LanguageModel]:
    """Models the user may see listed, in one query, each annotated with `usable` (may the user run it).

    Owners and auditors see every model (disabled too); other members see the enabled models that are open to
    everyone or granted to them.
    """
    sees_all = Q(organization__in=organizations_for_user(user, "provider.view").values("pk"))
    may_use = Q(organization__in=organizations_for_user(user, "model.use").values("pk"))
    openly_usable = usable_filter(user)
    return (
        LanguageModel.objects.for_user(user, "model.view")
        .filter(organization=organization)
        .filter(sees_all | openly_usable)
        .annotate(usable=ExpressionWrapper(may_use & openly_usable, output_field=BooleanField()))
        .select_related("provider", "fallback")
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


def provider_for_user(*, user: User, organization: Organization, provider_id: Any) -> Provider:
    """One provider the user may see; Http404 when it is missing or another organization's."""
    try:
        pk = int(provider_id)
    except (TypeError, ValueError):
        raise Http404("No such provider.") from None
    provider = providers_for_user(user=user, organization=organization).filter(pk=pk).first()
    if provider is None:
        raise Http404("No such provider.")
    return provider


def model_access_grants(*, model: LanguageModel) -> dict[str, list[str]]:
    """Who holds `use_languagemodel` on a model: {"users": [usernames], "groups": [names]} (two queries)."""
    from guardian.models import GroupObjectPermission, UserObjectPermission

    grant = _grant_filter(model)
    users = (
        UserObjectPermission.objects.filter(**grant).order_by("user__username").values_list("user__username", flat=True)
    )
    groups = GroupObjectPermission.objects.filter(**grant).order_by("group__name").values_list("group__name", flat=True)
    return {"users": list(users), "groups": list(groups)}


def can_use_models(*, user: User, organization: Organization) -> bool:
    """Whether the user may run agents with the organization's models."""
    return has_permission(user, organization, "model.use")


def grantable_groups(*, organization: Organization) -> QuerySet[Any]:
    """Groups with at least one member of the organization: groups are site-wide, other tenants' stay unnamed."""
    from django.contrib.auth.models import Group

    return Group.objects.filter(user__memberships__organization=organization).distinct().order_by("name")


def _grant_filter(model: LanguageModel) -> dict[str, str]:
    """The guardian rows of `use_languagemodel` on one model."""
    return {
        "permission__codename": "use_languagemodel",
        "permission__content_type__app_label": "providers",
        "object_pk": str(model.pk),
    }


def granted_groups(*, model: LanguageModel) -> QuerySet[Any]:
    """The groups holding a grant on the model (one query, with the grants as a subquery)."""
    from django.contrib.auth.models import Group
    from guardian.models import GroupObjectPermission

    grants = GroupObjectPermission.objects.filter(**_grant_filter(model)).values("group_id")
    return Group.objects.filter(pk__in=grants).order_by("name")


def grant_holders(*, model: LanguageModel) -> QuerySet[Any]:
    """The users holding a direct grant on the model, members of its organization or not any more."""
    from django.contrib.auth import get_user_model
    from guardian.models import UserObjectPermission

    grants = UserObjectPermission.objects.filter(**_grant_filter(model)).values("user_id")
    return get_user_model().objects.filter(pk__in=grants).order_by("username")


def access_user(*, organization: Organization, name: str, holders: QuerySet[Any] | None = None) -> Any:
    """The user an access change names by username or email: a member of the organization when granting, one of
    `holders` (the grant's holders, members or not any more) when revoking.

    ValidationError otherwise, with the same words for an unknown user and another tenant's, so the answer
    tells nothing about accounts outside the organization.
    """
    from django.contrib.auth import get_user_model
    from django.core.exceptions import ValidationError
    from django.db.models import Q

    value = name.strip()
    users = holders if holders is not None else get_user_model().objects.filter(memberships__organization=organization)
    found = list(users.filter(Q(username=value) | Q(email__iexact=value)).distinct()[:2])
    exact = [user for user in found if user.get_username() == value]
    if len(found) == 1 or len(exact) == 1:
        return exact[0] if exact else found[0]
    if found:
        raise ValidationError(f"Several users of {organization.name} use the email {value!r}: give the username.")
    if holders is not None:
        raise ValidationError(f"{value!r} holds no grant on this model.")
    raise ValidationError(
        f"No member of {organization.name} has the username or email {value!r}: invite them to the organization first."
    )


def access_grantee(
    *, model: LanguageModel, revoking: bool, user: str | None = None, group: str | None = None
) -> dict[str, Any]:
    """The user or group an access change names, looked up only where this organization may see it.

    Granting: a member of the organization (by username or email), or a group with members in it; revoking: a
    holder of the grant, or a group with members here or holding the grant. Anything else, in another tenant or
    nowhere, answers the same "no such" error.
    """
    from django.core.exceptions import ValidationError

    organization = model.organization
    if user:
        try:
            holders = grant_holders(model=model) if revoking else None
            return {"user": access_user(organization=organization, name=user, holders=holders)}
        except ValidationError as error:
            raise ValidationError({"user": error.messages}) from None
    from django.contrib.auth.models import Group
    from django.db.models import Q

    # A group with members here, or (when revoking) one holding a grant on the model: one query either way.
    named = Q(pk__in=grantable_groups(organization=organization).values("pk"))
    if revoking:
        named |= Q(pk__in=granted_groups(model=model).values("pk"))
    found_group = Group.objects.filter(named, name=group).first()
    if found_group is None:
        raise ValidationError({"group": f"No group with members in {organization.slug} is named {group!r}."})
    return {"group": found_group}
