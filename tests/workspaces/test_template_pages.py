"""The workspace template settings pages: members read, owners and template admins change, through the services."""

from __future__ import annotations

import pytest

from audit.models import AuditEvent
from organizations.models import Role
from tests.factories import UserFactory, make_member
from tests.pages import logged_in_client
from workspaces.models import WorkspaceTemplate
from workspaces.services import template_create

LIST = "/orgs/acme/settings/templates/"
DESCRIPTION = "Python 3.11 with pytest; no network."


@pytest.fixture
def template_admin(org):
    user = UserFactory(username="tamsin")
    make_member(org, user, Role.TEMPLATE_ADMIN)
    return user


@pytest.fixture
def template(org):
    return template_create(actor=None, organization=org, name="python", description=DESCRIPTION, memory_limit_mb=512)


def add_form(**values) -> dict:
    return {
        "name": "node",
        "description": "Node.js 20 with npm; no network.",
        "backend": "bubblewrap",
        "is_enabled": "on",
        **values,
    }


def test_a_member_reads_the_templates_without_a_form(template, agents_user):
    page = logged_in_client(agents_user).get(LIST)

    html = page.content.decode()
    assert page.status_code == 200
    assert "python" in html and DESCRIPTION in html and "512 MB" in html
    assert "You have read-only access." in html and "Add a template" not in html


def test_a_template_admin_adds_edits_and_deletes_and_each_write_is_audited(template, template_admin):
    browser = logged_in_client(template_admin)
    assert (
        'href="/orgs/acme/settings/templates/" aria-current="page">Templates</a>' in browser.get(LIST).content.decode()
    )

    added = browser.post(LIST, add_form(memory_limit_mb="256"))
    assert added.status_code == 302
    node = WorkspaceTemplate.objects.get(name="node")
    assert node.memory_limit_mb == 256 and node.is_enabled

    edit = f"/orgs/acme/settings/templates/{node.pk}/edit/"
    assert browser.get(edit).status_code == 200
    edited = browser.post(edit, add_form(memory_limit_mb="", is_enabled=""))
    assert edited.status_code == 302
    node.refresh_from_db()
    assert node.memory_limit_mb is None and not node.is_enabled

    deleted = browser.post(f"/orgs/acme/settings/templates/{node.pk}/delete/")
    assert deleted.status_code == 302 and not WorkspaceTemplate.objects.filter(pk=node.pk).exists()
    assert [e.action for e in AuditEvent.objects.filter(action__startswith="template.").order_by("sequence")] == [
        "template.created",  # the fixture's
        "template.created",
        "template.updated",
        "template.deleted",
    ]
    assert AuditEvent.objects.get(action="template.updated").data["changes"] == {
        "memory_limit_mb": {"before": 256, "after": None},
        "is_enabled": {"before": True, "after": False},
    }


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"name": "Not A Name"}, "lower-case letters"),
        ({"description": "short"}, "at least 10 characters"),
        ({"memory_limit_mb": "1"}, "from 64"),
        ({"memory_limit_mb": "lots"}, "Enter a whole number."),
        ({"name": "python"}, "already has a template named"),
    ],
)
def test_bad_input_is_shown_next_to_its_field_with_a_400(template, template_admin, values, says):
    page = logged_in_client(template_admin).post(LIST, add_form(**values))

    assert page.status_code == 400 and says in page.content.decode()
    assert WorkspaceTemplate.objects.count() == 1


def test_members_without_the_role_get_403_naming_it_and_nothing_changes(template, agents_user, auditor):
    for user in (agents_user, auditor):
        browser = logged_in_client(user)
        for response in (
            browser.post(LIST, add_form()),
            browser.get(f"/orgs/acme/settings/templates/{template.pk}/edit/"),
            browser.post(f"/orgs/acme/settings/templates/{template.pk}/delete/"),
        ):
            assert response.status_code == 403
            assert "needs one of the roles owner, template-admin" in response.content.decode()
    assert WorkspaceTemplate.objects.count() == 1
    assert not AuditEvent.objects.filter(action__in=["template.updated", "template.deleted"]).exists()


def test_another_organizations_pages_and_templates_answer_404(template, owner, outsider, other_org):
    foreign = template_create(actor=None, organization=other_org, name="globex-box", description=DESCRIPTION)

    assert logged_in_client(outsider).get(LIST).status_code == 404
    browser = logged_in_client(owner)
    assert browser.get(f"/orgs/acme/settings/templates/{foreign.pk}/edit/").status_code == 404
    assert browser.post(f"/orgs/acme/settings/templates/{foreign.pk}/delete/").status_code == 404
    assert WorkspaceTemplate.objects.filter(pk=foreign.pk).exists()
    assert "globex-box" not in browser.get(LIST).content.decode()
