"""Audit API routes: events, exports, SIEM destinations."""

from audit.api import destination_urls, event_urls, export_urls

urlpatterns = [*event_urls.urlpatterns, *export_urls.urlpatterns, *destination_urls.urlpatterns]
