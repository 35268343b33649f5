"""Agents API routes."""

from rest_framework.routers import SimpleRouter

from agents.api.views import AgentSessionViewSet

router = SimpleRouter()
router.register(r"orgs/(?P<org_slug>[-a-zA-Z0-9_]+)/sessions", AgentSessionViewSet, basename="session")

urlpatterns = router.urls
