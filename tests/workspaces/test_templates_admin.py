"""The Django admin of workspace templates: changes go through the audited services, bad values show on the form."""

from __future__ import annotations

import pytest

from audit.models import AuditEvent
from organizations.models import Role
from tests.factories import UserFactory, make_member
from tests.pages import logged_in_client
from workspaces.models import WorkspaceTemplate
from workspaces.services import template_create

ADD = "/admin/workspaces/workspacetemplate/add/"
DESCRIPTION = "Python 3.11 with pytest; no network."


@pytest.fixture
def staff_owner(org):
    user = UserFactory(username="sam", is_staff=True)
    make_member(org, user, Role.OWNER)
    return user


def form(org, **values) -> dict:
    return {"organization": org.pk, "name": "python", "description": DESCRIPTION, "backend": "bubblewrap", **values}


def test_an_owner_adds_and_changes_a_template_and_each_write_is_audited(org, staff_owner):
    browser = logged_in_client(staff_owner)
    response = browser.post(ADD, form(org, memory_limit_mb=256, is_enabled="on"))
    assert response.status_code == 302, response.content.decode()[:2000]
    template = WorkspaceTemplate.objects.get(organization=org, name="python")
    assert template.memory_limit_mb == 256 and template.is_enabled

    change = f"/admin/workspaces/workspacetemplate/{template.pk}/change/"
    response = browser.post(change, {**form(org, memory_limit_mb=512), "is_enabled": "on"})
    assert response.status_code == 302
    assert [e.action for e in AuditEvent.objects.filter(action__startswith="template.").order_by("sequence")] == [
        "template.created",
        "template.updated",
    ]
    assert AuditEvent.objects.get(action="template.updated").data == {
        "changes": {"memory_limit_mb": {"before": 256, "after": 512}}
    }


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"name": "Not A Name"}, "lower-case letters"),
        ({"description": "short"}, "at least 10 characters"),
        ({"memory_limit_mb": 1}, "from 64"),
    ],
)
def test_a_bad_value_is_shown_on_the_form_not_a_500(org, staff_owner, values, says):
    response = logged_in_client(staff_owner).post(ADD, form(org, **values))
    assert response.status_code == 200 and says in response.content.decode()
    assert not WorkspaceTemplate.objects.exists()


def test_a_duplicate_name_is_shown_on_the_form(org, staff_owner):
    template_create(actor=None, organization=org, name="python", description=DESCRIPTION)
    other = template_create(actor=None, organization=org, name="node", description="Node.js 20 with npm.")

    added = logged_in_client(staff_owner).post(ADD, form(org))
    renamed = logged_in_client(staff_owner).post(
        f"/admin/workspaces/workspacetemplate/{other.pk}/change/", form(org, description="Node.js 20 with npm.")
    )

    for response in (added, renamed):
        assert response.status_code == 200 and "already has a template named" in response.content.decode()


def test_staff_without_the_role_read_but_cannot_change_and_foreign_rows_are_hidden(org, other_org):
    reader = UserFactory(username="rita", is_staff=True)
    make_member(org, reader, Role.AGENTS_USER)
    mine = template_create(actor=None, organization=org, name="python", description=DESCRIPTION)
    foreign = template_create(actor=None, organization=other_org, name="secret-box", description=DESCRIPTION)
    browser = logged_in_client(reader)

    listing = browser.get("/admin/workspaces/workspacetemplate/")
    assert listing.status_code == 200
    assert "python" in listing.content.decode() and "secret-box" not in listing.content.decode()
    assert browser.post(ADD, form(org, name="new-one")).status_code == 403
    page = browser.post(f"/admin/workspaces/workspacetemplate/{mine.pk}/change/", form(org, memory_limit_mb=64))
    assert page.status_code == 403
    assert browser.get(f"/admin/workspaces/workspacetemplate/{foreign.pk}/change/").status_code == 302  # "not found"
    assert not AuditEvent.objects.filter(action="template.updated").exists()
    assert browser.post(f"/admin/workspaces/workspacetemplate/{mine.pk}/delete/", {"post": "yes"}).status_code == 403
    assert WorkspaceTemplate.objects.filter(pk=mine.pk).exists()


def test_the_organization_filter_names_only_the_staff_members_own_organizations(org, other_org, staff_owner):
    template_create(actor=None, organization=org, name="python", description=DESCRIPTION)
    template_create(actor=None, organization=other_org, name="secret-box", description=DESCRIPTION)

    html = logged_in_client(staff_owner).get("/admin/workspaces/workspacetemplate/").content.decode()

    assert "Acme" in html or "acme" in html
    assert "globex" not in html.lower()
