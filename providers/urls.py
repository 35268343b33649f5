"""Provider and model settings pages."""

urlpatterns: list = []
