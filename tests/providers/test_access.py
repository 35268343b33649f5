"""Who may use which model: enabled models, open to every agents user or restricted to granted users and groups."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from rest_framework.test import APIClient

from agents.services import session_start
from providers.selectors import models_for_user, models_visible_to
from providers.services import model_create, model_grant_access, model_revoke_access, model_update, provider_create
from tests.factories import UserFactory, make_member

MODELS = "/api/v1/orgs/acme/models/"


@pytest.fixture
def catalogue(org):
    """An open default model, a restricted one and a disabled one."""
    provider = provider_create(
        actor=None, organization=org, name="vLLM", kind="openai-compatible", base_url="http://vllm:8000/v1"
    )
    make = lambda identifier, **fields: model_create(  # noqa: E731
        actor=None,
        organization=org,
        provider=provider,
        identifier=identifier,
        display_name=identifier,
        context_limit=8000,
        **fields,
    )
    return {
        "open": make("open"),
        "restricted": make("restricted", restricted_access=True),
        "disabled": make("disabled", is_enabled=False),
    }


def names(queryset) -> list[str]:
    return sorted(model.identifier for model in queryset)


def test_agents_users_get_open_enabled_models_only_until_granted(org, owner, agents_user, catalogue):
    assert names(models_for_user(user=agents_user, organization=org)) == ["open"]

    model_grant_access(actor=owner, model=catalogue["restricted"], user=agents_user)

    assert names(models_for_user(user=agents_user, organization=org)) == ["open", "restricted"]


def test_a_group_grant_lets_its_members_use_the_model(org, owner, agents_user, catalogue):
    group = Group.objects.create(name="ml-team")
    agents_user.groups.add(group)

    model_grant_access(actor=owner, model=catalogue["restricted"], group=group)

    assert names(models_for_user(user=agents_user, organization=org)) == ["open", "restricted"]
    model_revoke_access(actor=owner, model=catalogue["restricted"], group=group)
    assert names(models_for_user(user=agents_user, organization=org)) == ["open"]


def test_a_grant_does_not_replace_the_agents_user_role(org, owner, plain_member, catalogue):
    model_grant_access(actor=owner, model=catalogue["restricted"], user=plain_member)

    assert names(models_for_user(user=plain_member, organization=org)) == []


def test_disabled_models_are_offered_to_nobody(org, owner, catalogue):
    assert "disabled" not in names(models_for_user(user=owner, organization=org))


def test_models_for_user_is_one_query_with_grants_users_and_groups(
    org, owner, agents_user, catalogue, django_assert_num_queries
):
    group = Group.objects.create(name="ml-team")
    agents_user.groups.add(group)
    model_grant_access(actor=owner, model=catalogue["restricted"], group=group)

    with django_assert_num_queries(1):
        usable = list(models_for_user(user=agents_user, organization=org))
        _ = [model.provider.name for model in usable]

    assert names(usable) == ["open", "restricted"]


def test_visible_models_are_one_query_and_say_which_ones_the_user_may_use(
    org, owner, agents_user, auditor, catalogue, django_assert_num_queries
):
    with django_assert_num_queries(1):
        rows = {m.identifier: m.usable for m in models_visible_to(user=agents_user, organization=org)}
    assert rows == {"open": True}
    with django_assert_num_queries(1):
        rows = {m.identifier: m.usable for m in models_visible_to(user=auditor, organization=org)}
    assert rows == {"open": False, "restricted": False, "disabled": False}


def test_a_session_cannot_start_on_a_restricted_model_without_a_grant(org, owner, agents_user, catalogue):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        session_start(user=agents_user, organization=org, prompt="hi", model_id=catalogue["restricted"].pk)

    model_grant_access(actor=owner, model=catalogue["restricted"], user=agents_user)
    session = session_start(user=agents_user, organization=org, prompt="hi", model_id=catalogue["restricted"].pk)
    assert session.model_id == catalogue["restricted"].pk


def test_members_listing_shows_what_they_may_use(org, owner, agents_user, catalogue):
    client = APIClient()
    client.force_authenticate(agents_user)

    before = {row["identifier"]: row["can_use"] for row in client.get(MODELS).json()["results"]}
    model_grant_access(actor=owner, model=catalogue["restricted"], user=agents_user)
    after = {row["identifier"]: row["can_use"] for row in client.get(MODELS).json()["results"]}

    assert before == {"open": True} and after == {"open": True, "restricted": True}


def test_owner_grants_access_through_the_api_and_auditors_read_it(org, owner, agents_user, auditor, catalogue):
    restricted = catalogue["restricted"]
    owner_client, auditor_client = APIClient(), APIClient()
    owner_client.force_authenticate(owner)
    auditor_client.force_authenticate(auditor)

    granted = owner_client.post(f"{MODELS}{restricted.pk}/access/", {"user": "alice"}, format="json")
    assert granted.status_code == 200 and granted.json()["users"] == ["alice"]
    assert auditor_client.get(f"{MODELS}{restricted.pk}/access/").json()["users"] == ["alice"]
    assert auditor_client.post(f"{MODELS}{restricted.pk}/access/", {"user": "alice"}, format="json").status_code == 403
    assert owner_client.post(f"{MODELS}{restricted.pk}/access/", {"user": "nobody"}, format="json").status_code == 400
    revoked = owner_client.delete(f"{MODELS}{restricted.pk}/access/", {"user": "alice"}, format="json")
    assert revoked.json()["users"] == []


def test_the_api_takes_an_email_as_the_page_does_and_revokes_only_what_was_granted(org, owner, agents_user, catalogue):
    url = f"{MODELS}{catalogue['restricted'].pk}/access/"
    client = APIClient()
    client.force_authenticate(owner)

    not_granted = client.delete(url, {"user": "alice"}, format="json")
    granted = client.post(url, {"user": "ALICE@example.test"}, format="json")
    revoked = client.delete(url, {"user": "alice@example.test"}, format="json")

    assert not_granted.status_code == 400 and not_granted.json()["user"] == ["'alice' holds no grant on this model."]
    assert granted.status_code == 200 and granted.json()["users"] == ["alice"]
    assert revoked.status_code == 200 and revoked.json()["users"] == []


def test_the_api_grants_and_revokes_a_group_even_once_it_has_no_member_here(org, owner, agents_user, catalogue):
    url = f"{MODELS}{catalogue['restricted'].pk}/access/"
    team = Group.objects.create(name="ml-team")
    agents_user.groups.add(team)
    client = APIClient()
    client.force_authenticate(owner)

    granted = client.post(url, {"group": "ml-team"}, format="json")
    agents_user.groups.remove(team)  # the grant outlives the group's last member here
    revoked = client.delete(url, {"group": "ml-team"}, format="json")

    assert granted.status_code == 200 and granted.json()["groups"] == ["ml-team"]
    assert revoked.status_code == 200 and revoked.json()["groups"] == []


def test_opening_a_restricted_model_makes_it_usable_for_every_agents_user(org, owner, catalogue):
    newcomer = UserFactory(username="nina")
    make_member(org, newcomer, "agents-user")

    model_update(actor=owner, model=catalogue["restricted"], restricted_access=False)

    assert names(models_for_user(user=newcomer, organization=org)) == ["open", "restricted"]


def test_the_access_api_tells_nothing_about_other_tenants_users_or_groups(org, other_org, owner, catalogue):
    restricted = catalogue["restricted"]
    stranger = UserFactory(username="stranger")
    make_member(other_org, stranger)
    their_team = Group.objects.create(name="their-team")
    stranger.groups.add(their_team)
    client = APIClient()
    client.force_authenticate(owner)
    url = f"{MODELS}{restricted.pk}/access/"

    foreign = client.post(url, {"user": "stranger"}, format="json")
    missing = client.post(url, {"user": "nobody"}, format="json")
    foreign_group = client.post(url, {"group": "their-team"}, format="json")

    assert foreign.status_code == missing.status_code == foreign_group.status_code == 400
    no_member = "No member of {} has the username or email {!r}: invite them to the organization first."
    assert foreign.json()["user"] == [no_member.format(org.name, "stranger")]
    assert missing.json()["user"] == [no_member.format(org.name, "nobody")]
    listed = client.get(url)
    assert listed.status_code == 200 and "their-team" not in str(listed.json())
    with pytest.raises(ValidationError, match="has no members in"):
        model_grant_access(actor=owner, model=restricted, group=their_team)
