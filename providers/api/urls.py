"""Providers and models API routes (under /api/v1/)."""

from rest_framework.routers import SimpleRouter

from providers.api.views import LanguageModelViewSet, ProviderViewSet

router = SimpleRouter()
router.register(r"orgs/(?P<org_slug>[-a-zA-Z0-9_]+)/models", LanguageModelViewSet, basename="org-model")
router.register(r"orgs/(?P<org_slug>[-a-zA-Z0-9_]+)/providers", ProviderViewSet, basename="org-provider")

urlpatterns = router.urls
