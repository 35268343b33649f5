"""Settings pages for providers and models: owners manage them, auditors read them. Thin: every write is a service."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, Exists, OuterRef, Prefetch
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from organizations.models import Membership, Organization
from organizations.permissions import has_permission, is_member, role_names
from providers import services
from providers.checks import provider_check
from providers.forms import (
    LanguageModelForm,
    ModelAccessForm,
    ModelRestrictionForm,
    ProviderForm,
    apply_service_errors,
    provider_key_label,
)
from providers.models import LanguageModel, Provider, ProviderKind
from providers.selectors import (
    grant_holders,
    grantable_groups,
    granted_groups,
    models_visible_to,
    providers_for_user,
)

VIEW_ACTION = "provider.view"
CHECKS_SESSION_KEY = "provider_checks"


class _Forbidden(Exception):
    """A member without the role a settings page needs (answered with a page naming the roles)."""

    def __init__(self, organization: Organization, what: str, action: str) -> None:
        super().__init__(what)
        self.organization, self.what, self.action = organization, what, action


def _organization(request: HttpRequest, slug: str) -> Organization:
    """The organization in the URL; 404 when it is missing or the user is not a member; 403 without a settings role."""
    organization = Organization.objects.filter(slug=slug).first()
    if organization is None or not is_member(request.user, organization):
        raise Http404("No such organization.")
    if not has_permission(request.user, organization, VIEW_ACTION):
        raise _Forbidden(organization, "Provider and model settings", VIEW_ACTION)
    return organization


def _require_manage(request: HttpRequest, organization: Organization, action: str) -> None:
    if not has_permission(request.user, organization, action):
        raise _Forbidden(organization, "Changing provider and model settings", action)


def _forbidden(request: HttpRequest, error: _Forbidden | PermissionDenied, organization: Organization) -> HttpResponse:
    if isinstance(error, _Forbidden):
        reason = f"{error.what} need one of the roles {role_names(error.action)} in {organization.name}."
    else:
        reason = str(error) or "Your roles do not allow this."
    context = {"organization": organization, "reason": reason, "settings_nav": _nav(request, organization)}
    return render(request, "providers/forbidden.html", context, status=403)


def _settings_page(view: Any) -> Any:
    """Login required; 404 for foreign organizations; a 403 page naming the roles for the rest."""

    @login_required
    def wrapper(request: HttpRequest, slug: str, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, slug=slug, **kwargs)
        except _Forbidden as error:
            return _forbidden(request, error, error.organization)
        except PermissionDenied as error:  # a service refused: the view already resolved the organization
            return _forbidden(request, error, get_object_or_404(Organization, slug=slug))

    wrapper.__name__ = view.__name__
    wrapper.__doc__ = view.__doc__
    return wrapper


def _nav(request: HttpRequest, organization: Organization) -> dict[str, Any]:
    """Which section of the organization's navigation is open (providers or models)."""
    url_name = request.resolver_match.url_name if request.resolver_match else ""
    return {"current": "providers" if url_name.startswith("provider") else "models"}


def _context(request: HttpRequest, organization: Organization, **extra: Any) -> dict[str, Any]:
    return {
        "organization": organization,
        "settings_nav": _nav(request, organization),
        "can_manage_providers": has_permission(request.user, organization, "provider.manage"),
        "can_manage_models": has_permission(request.user, organization, "model.manage"),
        **extra,
    }


def _provider(request: HttpRequest, organization: Organization, provider_id: int) -> Provider:
    """A provider of this organization the user may see; 404 otherwise (another organization's too)."""
    return get_object_or_404(providers_for_user(user=request.user, organization=organization), pk=provider_id)


def _model(request: HttpRequest, organization: Organization, model_id: int) -> LanguageModel:
    """A model of this organization the user may see; 404 otherwise (another organization's too)."""
    return get_object_or_404(models_visible_to(user=request.user, organization=organization), pk=model_id)


def _row_url(slug: str, row: Provider | LanguageModel) -> str:
    """The list page of a provider or a model, scrolled to its row."""
    if isinstance(row, Provider):
        return f"{reverse('providers:provider-list', kwargs={'slug': slug})}#provider-{row.pk}"
    return f"{reverse('providers:model-list', kwargs={'slug': slug})}#model-{row.pk}"


def _posted(request: HttpRequest) -> Any:
    """The form data of a POST; None on GET (an unbound form)."""
    return request.POST if request.method == "POST" else None


def _save_edit(
    request: HttpRequest,
    form: ProviderForm | LanguageModelForm,
    update: Callable[..., object],
    saved: Callable[[], str],
) -> bool:
    """Validate an edit form and hand what changed to the service; True (and a flash message) once saved.

    A refusal from the service lands next to the fields it names.
    """
    if not form.is_valid():
        return False
    try:
        changes = form.update_changes()
        if changes:
            update(**changes)
    except ValidationError as error:
        apply_service_errors(form, error)
        return False
    messages.success(request, saved() if changes else "Nothing changed.")
    return True


def _call_service(request: HttpRequest, call: Callable[[], object], done: str) -> bool:
    """Run a service call that takes no form; flash `done`, or the reason it refused (a ValidationError)."""
    try:
        call()
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
        return False
    messages.success(request, done)
    return True


# Providers -------------------------------------------------------------------------------------------------------


def _provider_rows(request: HttpRequest, organization: Organization) -> list[dict[str, Any]]:
    """The providers with their model counts and the last check run in this browser session (two queries)."""
    providers = (
        providers_for_user(user=request.user, organization=organization)
        .annotate(model_count=Count("models"))
        .prefetch_related(Prefetch("models", queryset=LanguageModel.objects.order_by("display_name")))
        .order_by("name")
    )
    checks = request.session.get(CHECKS_SESSION_KEY, {})
    return [
        {"provider": provider, "key_label": provider_key_label(provider), "check": checks.get(str(provider.pk))}
        for provider in providers
    ]


def _render_provider_list(
    request: HttpRequest, organization: Organization, form: ProviderForm | None, status: int = 200
) -> HttpResponse:
    context = _context(
        request,
        organization,
        rows=_provider_rows(request, organization),
        form=form,
        kinds=ProviderKind.choices,
    )
    return render(request, "providers/provider_list.html", context, status=status)


@_settings_page
@require_http_methods(["GET", "POST"])
def provider_list(request: HttpRequest, slug: str) -> HttpResponse:
    """The organization's providers; owners add one here (POST)."""
    organization = _organization(request, slug)
    can_manage = has_permission(request.user, organization, "provider.manage")
    if request.method == "GET":
        return _render_provider_list(request, organization, ProviderForm() if can_manage else None)
    _require_manage(request, organization, "provider.manage")
    form = ProviderForm(request.POST)
    if form.is_valid():
        try:
            provider = services.provider_create(
                actor=request.user, organization=organization, **form.create_arguments()
            )
        except ValidationError as error:
            apply_service_errors(form, error)
        else:
            messages.success(
                request, f"Added the provider {provider.name}. Press Test to check that Airlock reaches it."
            )
            return redirect(_row_url(slug, provider))
    return _render_provider_list(request, organization, form, status=400)


@_settings_page
@require_http_methods(["GET", "POST"])
def provider_edit(request: HttpRequest, slug: str, provider_id: int) -> HttpResponse:
    """Edit a provider; a blank key keeps the stored one."""
    organization = _organization(request, slug)
    provider = _provider(request, organization, provider_id)
    _require_manage(request, organization, "provider.manage")
    form = ProviderForm(_posted(request), provider=provider)
    update = partial(services.provider_update, actor=request.user, provider=provider)
    if form.is_bound and _save_edit(request, form, update, lambda: f"Saved the provider {form.cleaned_data['name']}."):
        return redirect(_row_url(slug, provider))
    context = _context(request, organization, provider=provider, form=form, key_label=provider_key_label(provider))
    return render(request, "providers/provider_edit.html", context, status=400 if form.is_bound else 200)


@_settings_page
@require_http_methods(["GET", "POST"])
def provider_delete(request: HttpRequest, slug: str, provider_id: int) -> HttpResponse:
    """Confirm (GET), then delete (POST) a provider."""
    organization = _organization(request, slug)
    provider = _provider(request, organization, provider_id)
    _require_manage(request, organization, "provider.manage")
    if request.method == "POST":
        delete = partial(services.provider_delete, actor=request.user, provider=provider)
        _call_service(request, delete, f"Deleted the provider {provider.name}.")
        return redirect("providers:provider-list", slug=slug)
    model_count = LanguageModel.objects.filter(provider=provider).count()
    context = _context(request, organization, provider=provider, model_count=model_count)
    return render(request, "providers/provider_delete.html", context)


def _check_record(result: Any) -> dict[str, Any]:
    """A check result as plain data for the session (what the page shows; the check never includes the key)."""
    steps = []
    for step in getattr(result, "steps", []) or []:
        steps.append(
            {
                "name": str(getattr(step, "name", "")),
                "ok": bool(getattr(step, "ok", False)),
                "detail": str(getattr(step, "detail", "") or ""),
                "duration_ms": getattr(step, "duration_ms", None),
            }
        )
    return {
        "ok": bool(getattr(result, "ok", False)),
        "summary": str(getattr(result, "summary", "") or ""),
        "steps": steps,
        "at": timezone.now().strftime("%Y-%m-%d %H:%M:%S UTC"),
    }


@_settings_page
@require_POST
def provider_test(request: HttpRequest, slug: str, provider_id: int) -> HttpResponse:
    """Run the connectivity check (DNS, TCP, TLS, auth, model) and show each step on the list."""
    organization = _organization(request, slug)
    provider = _provider(request, organization, provider_id)
    _require_manage(request, organization, "provider.manage")
    model = None
    if request.POST.get("model"):
        model = _model(request, organization, _int_or_404(request.POST["model"]))
        if model.provider_id != provider.pk:
            raise Http404("No such model on this provider.")
    try:
        result = provider_check(actor=request.user, provider=provider, model=model)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
        return redirect(_row_url(slug, provider))
    checks = dict(request.session.get(CHECKS_SESSION_KEY, {}))
    checks[str(provider.pk)] = _check_record(result)
    request.session[CHECKS_SESSION_KEY] = checks
    return redirect(_row_url(slug, provider))


def _int_or_404(value: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise Http404("No such model.") from None


# Models ----------------------------------------------------------------------------------------------------------


def _model_form(
    request: HttpRequest, organization: Organization, data: Any = None, model: LanguageModel | None = None
) -> LanguageModelForm:
    return LanguageModelForm(
        data,
        providers=providers_for_user(user=request.user, organization=organization).order_by("name"),
        models=models_visible_to(user=request.user, organization=organization).order_by("display_name"),
        model=model,
    )


def _render_model_list(
    request: HttpRequest, organization: Organization, form: LanguageModelForm | None, status: int = 200
) -> HttpResponse:
    models = (
        models_visible_to(user=request.user, organization=organization)
        .select_related("provider", "fallback")
        .order_by("-is_default", "display_name")
    )
    has_providers = providers_for_user(user=request.user, organization=organization).exists()
    context = _context(request, organization, models=models, form=form, has_providers=has_providers)
    return render(request, "providers/model_list.html", context, status=status)


@_settings_page
@require_http_methods(["GET", "POST"])
def model_list(request: HttpRequest, slug: str) -> HttpResponse:
    """The organization's models; owners add one here (POST)."""
    organization = _organization(request, slug)
    can_manage = has_permission(request.user, organization, "model.manage")
    if request.method == "GET":
        return _render_model_list(request, organization, _model_form(request, organization) if can_manage else None)
    _require_manage(request, organization, "model.manage")
    form = _model_form(request, organization, request.POST)
    if form.is_valid():
        try:
            model = services.model_create(actor=request.user, organization=organization, **form.create_arguments())
        except ValidationError as error:
            apply_service_errors(form, error)
        else:
            messages.success(request, f"Added the model {model.display_name}.")
            return redirect(_row_url(slug, model))
    return _render_model_list(request, organization, form, status=400)


@_settings_page
@require_http_methods(["GET", "POST"])
def model_edit(request: HttpRequest, slug: str, model_id: int) -> HttpResponse:
    """Edit every setting of a model (not its provider or identifier)."""
    organization = _organization(request, slug)
    model = _model(request, organization, model_id)
    _require_manage(request, organization, "model.manage")
    form = _model_form(request, organization, _posted(request), model=model)
    update = partial(services.model_update, actor=request.user, model=model)
    if form.is_bound and _save_edit(request, form, update, lambda: f"Saved the model {model.display_name}."):
        return redirect(_row_url(slug, model))
    context = _context(request, organization, model=model, form=form)
    return render(request, "providers/model_edit.html", context, status=400 if form.is_bound else 200)


@_settings_page
@require_http_methods(["GET", "POST"])
def model_delete(request: HttpRequest, slug: str, model_id: int) -> HttpResponse:
    """Confirm (GET), then delete (POST) a model."""
    organization = _organization(request, slug)
    model = _model(request, organization, model_id)
    _require_manage(request, organization, "model.manage")
    if request.method == "POST":
        delete = partial(services.model_delete, actor=request.user, model=model)
        _call_service(request, delete, f"Deleted the model {model.display_name}.")
        return redirect("providers:model-list", slug=slug)
    return render(request, "providers/model_delete.html", _context(request, organization, model=model))


@_settings_page
@require_POST
def model_default(request: HttpRequest, slug: str, model_id: int) -> HttpResponse:
    """Make a model the organization's default (the star)."""
    organization = _organization(request, slug)
    model = _model(request, organization, model_id)
    _require_manage(request, organization, "model.manage")
    make_default = partial(services.model_set_default, actor=request.user, model=model)
    _call_service(request, make_default, f"{model.display_name} is now the default model of {organization.name}.")
    return redirect(_row_url(slug, model))


# Who may use a model ---------------------------------------------------------------------------------------------


def _access_form(organization: Organization, model: LanguageModel, change: str, data: Any = None) -> ModelAccessForm:
    """The grant form (any group with members here) or a revoke button's form (the groups granted)."""
    if change != "revoke":
        groups = grantable_groups(organization=organization)
        return ModelAccessForm(data, organization=organization, groups=groups, prefix=change)
    return ModelAccessForm(
        data,
        organization=organization,
        groups=granted_groups(model=model),
        grant_holders=grant_holders(model=model),
        prefix=change,
    )


def _grant_rows(organization: Organization, model: LanguageModel) -> dict[str, list[Any]]:
    """The model's grants as the page lists them: users with their email and membership, groups with their id."""
    members = Membership.objects.filter(user=OuterRef("pk"), organization=organization)
    users = grant_holders(model=model).annotate(is_member=Exists(members))
    return {"users": list(users), "groups": list(granted_groups(model=model))}


def _render_model_access(
    request: HttpRequest,
    organization: Organization,
    model: LanguageModel,
    *,
    bound: ModelRestrictionForm | ModelAccessForm | None = None,
    status: int = 200,
) -> HttpResponse:
    """The access page; owners get the forms (`bound` replaces the one that was just posted), auditors none."""
    context = _context(request, organization, model=model, grants=_grant_rows(organization, model))
    if context["can_manage_models"]:
        context["restriction_form"] = ModelRestrictionForm(model=model, prefix="restriction")
        context["grant_form"] = _access_form(organization, model, "grant")
        context["revoke_form"] = None
        if bound is not None:
            context[f"{bound.prefix}_form"] = bound
    return render(request, "providers/model_access.html", context, status=status)


def _set_restricted(request: HttpRequest, organization: Organization, model: LanguageModel, restricted: bool) -> None:
    """Open or restrict a model through model_update (audited), and say what changed."""
    if restricted == model.restricted_access:
        messages.info(request, "Nothing changed.")
        return
    update = partial(services.model_update, actor=request.user, model=model, restricted_access=restricted)
    if restricted:
        done = f"{model.display_name} is now restricted to the users and groups granted access."
    else:
        done = f"{model.display_name} is now open to every agents user of {organization.name}."
    _call_service(request, update, done)


def _access_changed(form: ModelAccessForm, model: LanguageModel, change: str) -> str:
    """What the flash message says after a grant or a revoke."""
    grantee = form.grantee()
    if "user" in grantee:
        who = grantee["user"].get_username()
    else:
        who = f"The group {grantee['group'].name}"
    if change == "grant":
        return f"{who} may now use {model.display_name}."
    return f"{who} no longer has a grant on {model.display_name}."


@_settings_page
@require_http_methods(["GET", "POST"])
def model_access(request: HttpRequest, slug: str, model_id: int) -> HttpResponse:
    """Who may use a model: open to every agents user, or restricted to granted users and groups (owners change it)."""
    organization = _organization(request, slug)
    model = _model(request, organization, model_id)
    if request.method == "GET":
        return _render_model_access(request, organization, model)
    _require_manage(request, organization, "model.manage")
    change = request.POST.get("change", "")
    here = reverse("providers:model-access", kwargs={"slug": slug, "model_id": model.pk})
    if change == "restriction":
        form: ModelRestrictionForm | ModelAccessForm = ModelRestrictionForm(request.POST, model=model, prefix=change)
        if form.is_valid():
            _set_restricted(request, organization, model, form.restricted())
            return redirect(here)
    elif change in ("grant", "revoke"):
        form = _access_form(organization, model, change, request.POST)
        if form.is_valid():
            service = services.model_grant_access if change == "grant" else services.model_revoke_access
            try:
                service(actor=request.user, model=model, **form.grantee())
            except ValidationError as error:
                apply_service_errors(form, error)
            else:
                messages.success(request, _access_changed(form, model, change))
                return redirect(here)
    else:
        messages.error(request, "Nothing was changed: the form sent no known change.")
        return _render_model_access(request, organization, model, status=400)
    return _render_model_access(request, organization, model, bound=form, status=400)
