"""Audit pages: browse the log with filters, read one event whole, follow a session's timeline, the settings.

Owners and auditors only: a non-member gets 404 (like a missing organization), a member without the role
403. Every page of the log is a query of it, audited as `audit.viewed`. The settings page is not a query of
the log: auditors read it, owners change it through the audited settings and retention services.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from audit.forms import (
    CONTENT_POLICY_HELP,
    CONTENT_POLICY_TITLES,
    ContentPolicyForm,
    RetentionForm,
    apply_service_errors,
)
from audit.forwarding.selectors import destinations_for_user
from audit.models import AuditEvent, AuditSettings, Outcome
from audit.retention import audit_retention_update
from audit.selectors import (
    DEFAULT_PAGE_SIZE,
    DEFAULT_TIMELINE_SIZE,
    FILTER_NAMES,
    MAX_PAGE_SIZE,
    EventFilters,
    audit_settings_for_user,
    event_for_user,
    event_neighbours,
    events_page,
    parse_event_filters,
    parse_page_number,
    session_timeline_page,
)
from audit.settings_services import audit_settings_update
from audit.viewing import audit_viewed_record
from organizations.models import Organization
from organizations.permissions import has_permission, is_member, require_permission

PREVIEW_CHARS = 600


def _organization_for_reader(request: HttpRequest, slug: str) -> Organization:
    """The organization in the URL: 404 for a non-member, PermissionDenied (403) without the auditor role."""
    organization = Organization.objects.filter(slug=slug).first()
    if organization is None or not is_member(request.user, organization):
        raise Http404("No such organization.")
    require_permission(request.user, organization, "audit.view")
    return organization


def _content(value: Any) -> str:
    """A content field as text: the text itself, or what a digest-policy event kept of it."""
    if isinstance(value, dict) and set(value) == {"sha256", "length"}:
        return f"(digest only) sha256 {value['sha256']}, {value['length']} characters"
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _preview(text: str) -> str:
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + " …"


def timeline_step(event: AuditEvent) -> dict[str, Any]:
    """How one event reads in a session's timeline: a title, facts, and the text worth showing."""
    data = event.data if isinstance(event.data, dict) else {}
    facts: list[tuple[str, str]] = []
    text = ""
    kind = "other"
    if event.action == "prompt.submitted":
        kind, title, text = "prompt", f"Prompt by {event.actor_display}", _content(data.get("text"))
    elif event.action == "model.call":
        kind, title = "model", f"Model call: {data.get('model', '')}"
        for label, key in (
            ("provider", "provider"),
            ("step", "step"),
            ("latency", "latency_ms"),
            ("input tokens", "input_tokens"),
            ("output tokens", "output_tokens"),
            ("stop reason", "stop_reason"),
        ):
            if data.get(key) is not None:
                facts.append((label, f"{data[key]} ms" if key == "latency_ms" else str(data[key])))
        calls = data.get("tool_calls") or []
        if calls:
            facts.append(
                ("tool calls", ", ".join(str(call.get("name", "")) for call in calls if isinstance(call, dict)))
            )
        text = _preview(_content(data.get("response_text")))
    elif event.action == "tool.call":
        kind, title = "tool", f"Tool call: {data.get('name', '')}"
        text = _content(data.get("arguments"))
    elif event.action == "workspace.command":
        kind, title = "command", "Command"
        text = _content(data.get("command"))
        for label, key in (("exit code", "exit_code"), ("duration", "duration_ms"), ("output", "output_bytes")):
            if data.get(key) is not None:
                suffix = {"duration_ms": " ms", "output_bytes": " bytes"}.get(key, "")
                facts.append((label, f"{data[key]}{suffix}"))
        if data.get("timed_out"):
            facts.append(("timed out", "yes"))
        if data.get("working_directory"):
            facts.append(("directory", str(data["working_directory"])))
    else:
        title = event.action
    return {
        "event": event,
        "kind": kind,
        "title": title,
        "facts": facts,
        "text": text,
        "output_head": _preview(_content(data.get("output_head"))) if kind == "command" else "",
    }


def _query_string(filters: EventFilters, **extra: Any) -> str:
    params = {name: value for name, value in filters.used().items()}
    params.update({key: value for key, value in extra.items() if value not in (None, "")})
    return urlencode(params)


@require_GET
@login_required
def browse(request: HttpRequest, slug: str) -> HttpResponse:
    """The organization's audit log, newest first, with filters and pagination."""
    organization = _organization_for_reader(request, slug)
    form = {name: request.GET.get(name, "") for name in FILTER_NAMES}
    context: dict[str, Any] = {
        "organization": organization,
        "form": form,
        "outcomes": Outcome.values,
        "errors": {},
        "page": None,
    }
    try:
        filters = parse_event_filters(request.GET)
        cursor = parse_page_number("cursor", request.GET.get("cursor"), default=None, minimum=1)
        limit = parse_page_number(
            "limit", request.GET.get("limit"), default=DEFAULT_PAGE_SIZE, minimum=1, maximum=MAX_PAGE_SIZE
        )
    except ValidationError as exc:
        context["errors"] = {name: " ".join(messages) for name, messages in exc.message_dict.items()}
        return render(request, "audit/browse.html", context, status=400)
    page = events_page(user=request.user, organization=organization, filters=filters, cursor=cursor, limit=limit)
    audit_viewed_record(
        actor=request.user,
        organization=organization,
        view="page.browse",
        filters=filters.used(),
        page={"cursor": cursor, "limit": limit, "returned": len(page.events)},
    )
    context.update(
        page=page,
        filtered=bool(filters.used()),
        next_query=_query_string(filters, cursor=page.next_cursor, limit=limit if limit != DEFAULT_PAGE_SIZE else None)
        if page.next_cursor
        else "",
        first_query=_query_string(filters),
    )
    return render(request, "audit/browse.html", context)


@require_GET
@login_required
def event_detail(request: HttpRequest, slug: str, event_id: uuid.UUID) -> HttpResponse:
    """One event whole: every field, its data pretty-printed, and its place in the chain."""
    organization = _organization_for_reader(request, slug)
    try:
        event = event_for_user(user=request.user, organization=organization, event_id=event_id)
    except AuditEvent.DoesNotExist:
        raise Http404("No such event in this organization's audit log.") from None
    neighbours = event_neighbours(event=event)
    audit_viewed_record(actor=request.user, organization=organization, view="page.event", event_id=str(event.pk))
    context = {
        "organization": organization,
        "event": event,
        "data_json": json.dumps(event.data, indent=2, ensure_ascii=False, sort_keys=True),
        **neighbours,
    }
    return render(request, "audit/event.html", context)


@require_GET
@login_required
def session_detail(request: HttpRequest, slug: str, session_id: str) -> HttpResponse:
    """A session's timeline: the prompt, each model call, each command, in order, each linking to its event."""
    organization = _organization_for_reader(request, slug)
    try:
        after = parse_page_number("after", request.GET.get("after"), default=0, minimum=0)
    except ValidationError as exc:
        return HttpResponse(" ".join(exc.messages), status=400, content_type="text/plain; charset=utf-8")
    events = session_timeline_page(
        user=request.user, organization=organization, session_id=session_id, after=after or 0
    )
    if not events and not after:
        raise Http404("No such session in this organization's audit log.")
    audit_viewed_record(
        actor=request.user,
        organization=organization,
        view="page.session",
        filters={"session": session_id},
        page={"after": after, "returned": len(events)},
    )
    context = {
        "organization": organization,
        "session_id": session_id,
        "steps": [timeline_step(event) for event in events],
        "next_after": events[-1].sequence if len(events) == DEFAULT_TIMELINE_SIZE else None,
    }
    return render(request, "audit/session.html", context)


MANAGE_ACTION = "org.manage"  # owners (and superusers) change the settings; auditors only read them


def _save_settings(
    request: HttpRequest,
    organization: Organization,
    form: ContentPolicyForm | RetentionForm,
    service: Callable[..., AuditSettings],
) -> HttpResponse | None:
    """Call the section's service with the form's values: a redirect when saved, None to show the errors."""
    if not form.is_valid():
        return None
    before = form.state(form.current)
    try:
        saved = service(actor=request.user, organization=organization, **form.service_arguments())
    except ValidationError as error:
        apply_service_errors(form, error)
        return None
    messages.success(request, form.saved_message if form.state(saved) != before else "Nothing changed.")
    return redirect("audit:settings", slug=organization.slug)


@require_http_methods(["GET", "POST"])
@login_required
def settings_page(request: HttpRequest, slug: str) -> HttpResponse:
    """The audit settings: content policy, redaction patterns, retention, legal hold, SIEM destinations' state."""
    organization = _organization_for_reader(request, slug)
    can_edit = has_permission(request.user, organization, MANAGE_ACTION)
    current = audit_settings_for_user(user=request.user, organization=organization)
    policy_form = ContentPolicyForm(current=current)
    retention_form = RetentionForm(current=current)
    if request.method == "POST":
        if not can_edit:
            raise PermissionDenied("Only owners may change the audit settings.")
        section = request.POST.get("section")
        if section == "policy":
            policy_form = ContentPolicyForm(request.POST, current=current)
            done = _save_settings(request, organization, policy_form, audit_settings_update)
        elif section == "retention":
            retention_form = RetentionForm(request.POST, current=current)
            done = _save_settings(request, organization, retention_form, audit_retention_update)
        else:
            return HttpResponseBadRequest("Unknown settings section.", content_type="text/plain; charset=utf-8")
        if done is not None:
            return done
    context = {
        "organization": organization,
        "can_edit": can_edit,
        "current": current,
        "policy_title": CONTENT_POLICY_TITLES.get(current.content_policy, current.content_policy),
        "policy_help": CONTENT_POLICY_HELP.get(current.content_policy, ""),
        "policy_form": policy_form,
        "retention_form": retention_form,
        "destinations": list(destinations_for_user(user=request.user, organization=organization)),
    }
    return render(request, "audit/settings.html", context)
