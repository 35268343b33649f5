"""Server-rendered chat pages: thin views that resolve the organization and hand the rest to chat.js."""

from __future__ import annotations

import uuid

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import get_script_prefix, reverse
from django.views.decorators.http import require_GET

from agents.models import AgentSession
from agents.selectors import sessions_for_user
from organizations.models import Organization
from organizations.permissions import has_permission, is_member
from organizations.tenancy import organizations_for_user
from providers.models import LanguageModel
from providers.selectors import models_for_user

SIDEBAR_SESSIONS = 50


def _organization_for_member(request: HttpRequest, slug: str) -> Organization:
    """The organization named in the URL, or 404 when it is missing or the user is not a member."""
    organization = Organization.objects.filter(slug=slug).first()
    if organization is None or not is_member(request.user, organization):
        raise Http404("No such organization.")
    return organization


def _selected_model(models: list[LanguageModel], session: AgentSession | None) -> LanguageModel | None:
    """The session's model, else the organization's default, else the first one offered."""
    wanted = session.model_id if session else next((m.pk for m in models if m.is_default), None)
    return next((m for m in models if m.pk == wanted), models[0] if models else None)


@require_GET
@login_required
def home(request: HttpRequest) -> HttpResponse:
    """Send a signed-in user to the chat of their first organization, or explain that they have none."""
    organization = organizations_for_user(request.user).order_by("slug").first()
    if organization is None:
        return render(request, "agents/no_organization.html")
    return redirect("agents:chat", slug=organization.slug)


@require_GET
@login_required
def chat(request: HttpRequest, slug: str, session_id: uuid.UUID | None = None) -> HttpResponse:
    """The chat page of an organization, optionally opened on one of the user's sessions."""
    organization = _organization_for_member(request, slug)
    visible_sessions = sessions_for_user(user=request.user, organization=organization)
    session = get_object_or_404(visible_sessions, pk=session_id) if session_id is not None else None
    models = list(models_for_user(user=request.user, organization=organization).order_by("-is_default", "display_name"))
    if session is not None and session.model_id not in {model.pk for model in models}:
        models.append(session.model)  # a session keeps showing its model, even to someone who may not pick it
    sessions = visible_sessions.filter(created_by_id=request.user.pk)[:SIDEBAR_SESSIONS]
    selected = _selected_model(models, session)
    context = {
        "organization": organization,
        "session": session,
        "models": models,
        "selected_model_id": selected.pk if selected else None,
        "selected_is_simulator": bool(selected and selected.provider.is_simulator),
        "sessions": sessions,
        "can_prompt": has_permission(request.user, organization, "session.create")
        and (session is None or session.created_by_id == request.user.pk),
        "api_base": f"{get_script_prefix()}api/v1/orgs/{organization.slug}/",
        "chat_base": reverse("agents:chat", kwargs={"slug": organization.slug}),
    }
    return render(request, "agents/chat.html", context)
