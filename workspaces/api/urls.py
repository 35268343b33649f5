"""Workspace templates API routes (under /api/v1/)."""

from rest_framework.routers import SimpleRouter

from workspaces.api.views import WorkspaceTemplateViewSet

router = SimpleRouter()
router.register(r"orgs/(?P<org_slug>[-a-zA-Z0-9_]+)/templates", WorkspaceTemplateViewSet, basename="org-template")

urlpatterns = router.urls
