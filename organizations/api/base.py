"""The base API viewset: the organization comes from the URL and the tenant filter cannot be forgotten."""

from __future__ import annotations

from typing import Any, ClassVar

from django.db.models import QuerySet
from django.http import Http404
from rest_framework import viewsets

from organizations.models import Organization
from organizations.permissions import is_member


class OrganizationScopedViewSet(viewsets.GenericViewSet):
    """Resolve `<slug>` to an organization the user belongs to (else 404) and scope every queryset.

    Subclasses set `scoped_queryset(user, organization)` semantics through `base_queryset` (a callable
    returning an already user-scoped queryset) and may narrow it in `narrow_queryset`; they may not
    override `get_queryset` or `get_object`.
    """

    _forbidden_overrides: ClassVar[tuple[str, ...]] = ("get_queryset", "get_object")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in cls._forbidden_overrides:
            if name in cls.__dict__:
                raise TypeError(
                    f"{cls.__name__} overrides {name}: narrow the scoped queryset in narrow_queryset instead."
                )

    @property
    def organization(self) -> Organization:
        """The organization named in the URL, if the requesting user belongs to it; else 404."""
        cached = getattr(self, "_organization", None)
        if cached is not None:
            return cached
        organization = Organization.objects.filter(slug=self.kwargs.get("org_slug")).first()
        if organization is None or not is_member(self.request.user, organization):
            raise Http404("No such organization.")
        self._organization = organization
        return organization

    def initial(self, request: Any, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        _ = self.organization  # resolve (and 404) before any handler runs

    def scoped_queryset(self) -> QuerySet:
        """The user-scoped rows of this organization; subclasses implement it with a selector."""
        raise NotImplementedError

    def narrow_queryset(self, queryset: QuerySet) -> QuerySet:
        """Hook to narrow the already-scoped queryset (filters, ordering, select_related)."""
        return queryset

    def get_queryset(self) -> QuerySet:
        return self.narrow_queryset(self.scoped_queryset().filter(organization=self.organization))
