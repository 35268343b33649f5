"""Reads of SIEM destinations: owners and auditors see them, with their lag, in one query."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Count, F, IntegerField, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce, Greatest

from audit.models import AuditChainHead, AuditDestination, AuditPendingEvent
from audit.selectors import VIEW_ACTION
from organizations.models import Organization
from organizations.permissions import require_permission


def with_lag(queryset: QuerySet[AuditDestination]) -> QuerySet[AuditDestination]:
    """Annotate `head_sequence` and `lag` (events written but not yet acknowledged) in the same query.

    Events committed but not yet chained (batched chaining) count too: they are written, and a stopped
    chainer then shows as a growing lag instead of none.
    """
    head = AuditChainHead.objects.filter(organization_id=OuterRef("organization_id")).values("sequence")[:1]
    pending = (
        AuditPendingEvent.objects.filter(organization_id=OuterRef("organization_id"))
        .order_by()
        .values("organization_id")
        .annotate(count=Count("id"))
        .values("count")
    )
    return queryset.annotate(
        head_sequence=Coalesce(Subquery(head, output_field=IntegerField()), Value(0)),
        pending_events=Coalesce(Subquery(pending, output_field=IntegerField()), Value(0)),
    ).annotate(lag=Greatest(F("head_sequence") - F("delivered_sequence"), Value(0)) + F("pending_events"))


def destinations_for_user(
    *, user: AbstractBaseUser | AnonymousUser, organization: Organization
) -> QuerySet[AuditDestination]:
    """The organization's destinations with lag; PermissionDenied unless the user may view the audit log."""
    require_permission(user, organization, VIEW_ACTION)
    return with_lag(AuditDestination.objects.filter(organization_id=organization.pk)).order_by("name")


def destinations_of(*, organization: Organization) -> QuerySet[AuditDestination]:
    """Every destination of an organization with lag (CLI and admin, which run as the operator)."""
    return with_lag(AuditDestination.objects.filter(organization_id=organization.pk)).order_by("name")
