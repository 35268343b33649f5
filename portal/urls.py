"""Top-level URL routing."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from portal import health

api_v1 = [
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("", include("providers.api.urls")),
    path("", include("audit.api.urls")),
    path("", include("agents.api.urls")),
    path("", include("workspaces.api.urls")),
]

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
    path("api/v1/", include(api_v1)),
    path("", include("providers.urls")),
    path("", include("workspaces.urls")),
    path("", include("audit.urls")),
    path("", include("agents.urls")),
]
