"""Settings pages for workspace templates: members read them, owners and template admins change them.

Thin: every write is a `workspaces.services` call, audited there.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods

from organizations.models import Organization
from organizations.permissions import has_permission, is_member, role_names
from workspaces.forms import WorkspaceTemplateForm
from workspaces.models import WorkspaceTemplate
from workspaces.selectors import templates_for_user
from workspaces.services import template_create, template_delete, template_update

MANAGE = "template.manage"


def _organization(request: HttpRequest, slug: str) -> Organization:
    """The organization in the URL; 404 when it is missing or the user is not a member."""
    organization = Organization.objects.filter(slug=slug).first()
    if organization is None or not is_member(request.user, organization):
        raise Http404("No such organization.")
    return organization


def _template(request: HttpRequest, organization: Organization, template_id: int) -> WorkspaceTemplate:
    """A template of this organization; 404 otherwise (another organization's too)."""
    return get_object_or_404(templates_for_user(user=request.user, organization=organization), pk=template_id)


def _context(request: HttpRequest, organization: Organization, **extra: Any) -> dict[str, Any]:
    return {
        "organization": organization,
        "settings_nav": {"current": "templates"},
        "can_manage_templates": has_permission(request.user, organization, MANAGE),
        **extra,
    }


def _forbidden(request: HttpRequest, organization: Organization) -> HttpResponse | None:
    """A 403 page naming the roles, unless the user may change templates."""
    if has_permission(request.user, organization, MANAGE):
        return None
    reason = f"Changing workspace templates needs one of the roles {role_names(MANAGE)} in {organization.name}."
    context = {**_context(request, organization), "reason": reason}
    return render(request, "providers/forbidden.html", context, status=403)


@login_required
@require_http_methods(["GET", "POST"])
def template_list(request: HttpRequest, slug: str) -> HttpResponse:
    """The organization's templates; owners and template admins add one here (POST)."""
    organization = _organization(request, slug)
    form = None
    if request.method == "POST":
        if refused := _forbidden(request, organization):
            return refused
        form = WorkspaceTemplateForm(request.POST)
        if form.is_valid():
            try:
                template = template_create(actor=request.user, organization=organization, **form.values())
            except ValidationError as error:
                form.show_service_errors(error)
            else:
                messages.success(request, f"Added the template {template.name}.")
                return redirect("workspaces:template-list", slug=slug)
    elif has_permission(request.user, organization, MANAGE):
        form = WorkspaceTemplateForm()
    templates = templates_for_user(user=request.user, organization=organization)
    context = _context(request, organization, templates=templates, form=form)
    return render(request, "workspaces/template_list.html", context, status=400 if form and form.is_bound else 200)


@login_required
@require_http_methods(["GET", "POST"])
def template_edit(request: HttpRequest, slug: str, template_id: int) -> HttpResponse:
    """Edit a template; workspaces already started keep their limits."""
    organization = _organization(request, slug)
    template = _template(request, organization, template_id)
    if refused := _forbidden(request, organization):
        return refused
    form = WorkspaceTemplateForm(request.POST if request.method == "POST" else None, template=template)
    if form.is_bound and form.is_valid():
        try:
            changes = form.changes()
            if changes:
                template_update(actor=request.user, template=template, **changes)
        except ValidationError as error:
            form.show_service_errors(error)
        else:
            messages.success(request, f"Saved the template {template.name}." if changes else "Nothing changed.")
            return redirect("workspaces:template-list", slug=slug)
    context = _context(request, organization, template=template, form=form)
    return render(request, "workspaces/template_edit.html", context, status=400 if form.is_bound else 200)


@login_required
@require_http_methods(["GET", "POST"])
def template_remove(request: HttpRequest, slug: str, template_id: int) -> HttpResponse:
    """Confirm (GET), then delete (POST) a template."""
    organization = _organization(request, slug)
    template = _template(request, organization, template_id)
    if refused := _forbidden(request, organization):
        return refused
    if request.method == "POST":
        template_delete(actor=request.user, template=template)
        messages.success(request, f"Deleted the template {template.name}.")
        return redirect("workspaces:template-list", slug=slug)
    return render(request, "workspaces/template_delete.html", _context(request, organization, template=template))
