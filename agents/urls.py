"""Chat pages."""

urlpatterns: list = []
