"""Audit API routes: SIEM destinations (under /api/v1/)."""

from rest_framework.routers import SimpleRouter

from audit.api.destinations import DestinationViewSet

router = SimpleRouter()
router.register(
    r"orgs/(?P<org_slug>[-a-zA-Z0-9_]+)/audit/destinations", DestinationViewSet, basename="org-audit-destination"
)

urlpatterns = router.urls
