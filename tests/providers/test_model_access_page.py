"""The model access page: owners restrict a model and grant or revoke users and groups; auditors only read."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from audit.models import AuditEvent
from organizations.models import Organization, Role
from providers.models import LanguageModel
from providers.selectors import model_access_grants, models_for_user
from providers.services import model_create, model_grant_access, provider_create
from tests.factories import UserFactory, make_member
from tests.pages import field_block as _field_block
from tests.pages import logged_in_client as _client
from tests.pages import page_text as _text

MODELS = "/orgs/acme/settings/models/"


def _checked_access(html: str) -> str:
    """The value of the access radio button the page shows checked."""
    tags = re.findall(r'<input type="radio" name="restriction-access"[^>]*>', html)
    return next(re.search(r'value="(\w+)"', tag).group(1) for tag in tags if " checked" in tag)


def _usable(user, org: Organization) -> list[str]:
    """The models the chat offers the user (the selector the chat page and session_start use)."""
    return sorted(model.identifier for model in models_for_user(user=user, organization=org))


def _access_url(model: LanguageModel) -> str:
    return f"{MODELS}{model.pk}/access/"


def _grant(client: Client, model: LanguageModel, **fields: str):
    data = {"change": "grant", "grant-user": "", "grant-group": ""}
    data.update({f"grant-{name}": value for name, value in fields.items()})
    return client.post(_access_url(model), data)


def _revoke(client: Client, model: LanguageModel, **fields: str):
    data = {"change": "revoke"}
    data.update({f"revoke-{name}": value for name, value in fields.items()})
    return client.post(_access_url(model), data)


def _set_access(client: Client, model: LanguageModel, access: str):
    return client.post(_access_url(model), {"change": "restriction", "restriction-access": access})


@pytest.fixture
def model(org: Organization) -> LanguageModel:
    """An open model of acme (the default)."""
    provider = provider_create(
        actor=None, organization=org, name="vLLM", kind="openai-compatible", base_url="http://vllm:8000/v1"
    )
    return model_create(
        actor=None, organization=org, provider=provider, identifier="qwen", display_name="Qwen", context_limit=32_000
    )


@pytest.fixture
def bob(org: Organization):
    """A second agents user of acme, who is never granted anything."""
    user = UserFactory(username="bob")
    make_member(org, user, Role.AGENTS_USER)
    return user


@pytest.fixture
def ml_team(agents_user) -> Group:
    """A group whose member is alice (an agents user of acme)."""
    group = Group.objects.create(name="ml-team")
    agents_user.groups.add(group)
    return group


# --- owners ------------------------------------------------------------------------------------------------------


def test_owner_restricts_the_model_and_grants_a_user_who_alone_may_then_use_it(
    org, owner, agents_user, bob, model
) -> None:
    client = _client(owner)
    assert _usable(agents_user, org) == _usable(bob, org) == ["qwen"]

    restricted = _set_access(client, model, "restricted")

    assert restricted.status_code == 302
    assert _usable(agents_user, org) == _usable(bob, org) == []

    granted = _grant(client, model, user="alice")

    assert granted.status_code == 302
    assert _usable(agents_user, org) == ["qwen"]
    assert _usable(bob, org) == []
    page = _text(client.get(granted["Location"]))
    assert "alice may now use Qwen." in page
    assert 'data-grantee="alice"' in page and "alice@example.test" in page
    assert "restricted" in page


def test_each_access_change_lands_in_the_audit_trail_with_its_actor(org, owner, agents_user, model) -> None:
    client = _client(owner)

    _set_access(client, model, "restricted")
    _grant(client, model, user="alice")
    _revoke(client, model, user="alice")
    _set_access(client, model, "open")

    events = list(
        AuditEvent.objects.filter(organization=org, action__startswith="model.", target_id=str(model.pk)).order_by(
            "sequence"
        )
    )
    assert [event.action for event in events] == [
        "model.created",
        "model.updated",
        "model.access_granted",
        "model.access_revoked",
        "model.updated",
    ]
    assert events[1].data["changes"]["restricted_access"] == {"before": False, "after": True}
    assert events[2].data["user"] == "alice" and events[2].data["restricted_access"] is True
    assert events[3].data["user"] == "alice"
    assert events[4].data["changes"]["restricted_access"] == {"before": True, "after": False}
    assert {event.actor_id for event in events[1:]} == {str(owner.pk)}


def test_granting_by_email_finds_the_member(org, owner, agents_user, model) -> None:
    _set_access(_client(owner), model, "restricted")

    response = _grant(_client(owner), model, user="ALICE@example.test")

    assert response.status_code == 302
    assert model_access_grants(model=model)["users"] == ["alice"]
    assert _usable(agents_user, org) == ["qwen"]


def test_revoking_a_grant_takes_the_model_away(org, owner, agents_user, model) -> None:
    client = _client(owner)
    _set_access(client, model, "restricted")
    _grant(client, model, user="alice")

    response = _revoke(client, model, user="alice")

    assert response.status_code == 302
    assert _usable(agents_user, org) == []
    page = _text(client.get(response["Location"]))
    assert "alice no longer has a grant on Qwen." in page
    assert 'id="no-grants"' in page
    assert "Nobody is granted access yet" in page


def test_a_group_granted_from_the_page_lets_its_members_use_the_model_until_revoked(
    org, owner, agents_user, bob, ml_team, model
) -> None:
    client = _client(owner)
    _set_access(client, model, "restricted")

    granted = _grant(client, model, group=str(ml_team.pk))

    assert granted.status_code == 302
    assert _usable(agents_user, org) == ["qwen"]
    assert _usable(bob, org) == []
    page = _text(client.get(_access_url(model)))
    assert 'data-grantee="ml-team"' in page
    assert AuditEvent.objects.get(action="model.access_granted").data["group"] == "ml-team"

    revoked = _revoke(client, model, group=str(ml_team.pk))

    assert revoked.status_code == 302
    assert _usable(agents_user, org) == []
    assert AuditEvent.objects.get(action="model.access_revoked").data["group"] == "ml-team"


def test_the_page_says_whether_the_model_is_open_or_restricted(owner, model) -> None:
    client = _client(owner)

    open_page = _text(client.get(_access_url(model)))
    _set_access(client, model, "restricted")
    restricted_page = _text(client.get(_access_url(model)))

    assert "Every agents user of Acme may use it." in open_page
    assert _checked_access(open_page) == "open"
    assert "Only the users and groups granted below may use it." in restricted_page
    assert _checked_access(restricted_page) == "restricted"


def test_saving_the_same_access_changes_nothing_and_writes_no_event(owner, model) -> None:
    response = _set_access(_client(owner), model, "open")

    assert response.status_code == 302
    assert not AuditEvent.objects.filter(action="model.updated").exists()


# --- refused input -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["oscar", "oscar@example.test", "nobody-at-all"])
def test_granting_someone_who_is_not_a_member_is_an_error_next_to_the_member_field(
    owner, outsider, model, name
) -> None:
    response = _grant(_client(owner), model, user=name)

    assert response.status_code == 400
    block = _field_block(_text(response), "id_grant-user")
    assert "No member of Acme has the username or email" in block
    assert model_access_grants(model=model) == {"users": [], "groups": []}
    assert not AuditEvent.objects.filter(action="model.access_granted").exists()


@pytest.mark.parametrize("group_id", ["999999", "not-a-number"])
def test_a_bad_group_id_is_an_error_next_to_the_group_field(owner, model, group_id) -> None:
    response = _grant(_client(owner), model, group=group_id)

    assert response.status_code == 400
    assert "No such group in Acme" in _field_block(_text(response), "id_grant-group")
    assert model_access_grants(model=model) == {"users": [], "groups": []}


def test_a_group_without_members_here_is_neither_offered_nor_accepted(owner, outsider, ml_team, model) -> None:
    other_tenants_group = Group.objects.create(name="globex-secret-team")
    outsider.groups.add(other_tenants_group)

    page = _client(owner).get(_access_url(model))
    response = _grant(_client(owner), model, group=str(other_tenants_group.pk))

    assert page.status_code == 200
    assert ml_team.name in _text(page) and "globex-secret-team" not in _text(page)
    assert response.status_code == 400
    assert "No such group in Acme" in _field_block(_text(response), "id_grant-group")


@pytest.mark.parametrize("both", [False, True], ids=["nobody", "both"])
def test_naming_nobody_or_both_a_user_and_a_group_is_refused(owner, agents_user, ml_team, model, both) -> None:
    fields = {"user": "alice", "group": str(ml_team.pk)} if both else {}

    response = _grant(_client(owner), model, **fields)

    assert response.status_code == 400
    assert "Name one member or pick one group (not both)." in _text(response)
    assert model_access_grants(model=model) == {"users": [], "groups": []}


def test_an_unknown_change_is_refused_without_touching_anything(owner, model) -> None:
    response = _client(owner).post(_access_url(model), {"change": "explode"})

    assert response.status_code == 400
    model.refresh_from_db()
    assert not model.restricted_access


# --- who may open it ---------------------------------------------------------------------------------------------


def test_auditor_sees_the_grants_but_no_form_and_every_post_answers_403(owner, auditor, agents_user, model) -> None:
    model_grant_access(actor=owner, model=model, user=agents_user)
    client = _client(auditor)

    page = client.get(_access_url(model))

    assert page.status_code == 200
    html = _text(page)
    assert 'data-grantee="alice"' in html and "read-only" in html
    assert "<form" not in html.split("<main", 1)[1]
    for response in (
        _set_access(client, model, "restricted"),
        _grant(client, model, user="audrey"),
        _revoke(client, model, user="alice"),
    ):
        assert response.status_code == 403
        assert "owner" in _text(response)
    model.refresh_from_db()
    assert not model.restricted_access
    assert model_access_grants(model=model)["users"] == ["alice"]


@pytest.mark.parametrize("who", ["agents_user", "plain_member"])
def test_members_without_a_settings_role_get_the_forbidden_page(request, model, who) -> None:
    client = _client(request.getfixturevalue(who))

    assert client.get(_access_url(model)).status_code == 403
    assert _grant(client, model, user="alice").status_code == 403
    assert model_access_grants(model=model) == {"users": [], "groups": []}


def test_another_organization_answers_404(outsider, model) -> None:
    client = _client(outsider)

    assert client.get(_access_url(model)).status_code == 404
    assert _grant(client, model, user="oscar").status_code == 404


def test_anonymous_visitors_are_sent_to_log_in(client, model) -> None:
    response = client.get(_access_url(model))

    assert response.status_code == 302
    assert "login" in response["Location"]


def test_a_model_of_another_organization_answers_404(other_org, owner, agents_user) -> None:
    provider = provider_create(
        actor=None, organization=other_org, name="Theirs", kind="openai-compatible", base_url="http://x:1/v1"
    )
    foreign = model_create(
        actor=None, organization=other_org, provider=provider, identifier="t", display_name="T", context_limit=8000
    )
    client = _client(owner)

    assert client.get(_access_url(foreign)).status_code == 404
    assert _grant(client, foreign, user="alice").status_code == 404
    assert _set_access(client, foreign, "restricted").status_code == 404
    foreign.refresh_from_db()
    assert not foreign.restricted_access and model_access_grants(model=foreign)["users"] == []


# --- the model list and the page's cost ---------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["owner", "auditor"])
def test_the_model_list_links_each_model_to_its_access_page(request, model, who) -> None:
    html = _text(_client(request.getfixturevalue(who)).get(MODELS))

    assert f'href="{_access_url(model)}"' in html


def test_the_page_costs_the_same_queries_whatever_the_number_of_grants(org, owner, model) -> None:
    client = _client(owner)

    def grant_one_more(number: int) -> None:
        user = UserFactory(username=f"grantee{number}")
        make_member(org, user, Role.AGENTS_USER)
        group = Group.objects.create(name=f"team{number}")
        user.groups.add(group)
        model_grant_access(actor=owner, model=model, user=user)
        model_grant_access(actor=owner, model=model, group=group)

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(_access_url(model)).status_code == 200
        return len(captured)

    grant_one_more(0)
    with_one = queries()
    for number in range(1, 6):
        grant_one_more(number)

    assert queries() == with_one


def test_a_grant_kept_by_someone_who_left_the_organization_can_still_be_revoked(org, owner, agents_user, model) -> None:
    client = _client(owner)
    _set_access(client, model, "restricted")
    _grant(client, model, user="alice")
    agents_user.memberships.filter(organization=org).delete()  # alice leaves; her grant stays behind
    page = _text(client.get(_access_url(model)))
    assert "not a member" in page and 'name="revoke-user" value="alice"' in page

    response = _revoke(client, model, user="alice")

    assert response.status_code == 302
    assert model_access_grants(model=model)["users"] == []
    assert AuditEvent.objects.filter(organization=org, action="model.access_revoked").exists()


def test_revoking_someone_without_a_grant_says_so_and_changes_nothing(org, owner, agents_user, model) -> None:
    client = _client(owner)
    _set_access(client, model, "restricted")
    events = AuditEvent.objects.count()

    response = _revoke(client, model, user="alice")

    assert response.status_code == 400
    assert "&#x27;alice&#x27; holds no grant on this model." in _text(response)
    assert AuditEvent.objects.count() == events
