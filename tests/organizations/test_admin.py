"""The organizations admin: superusers see members and roles; nobody edits there."""

from __future__ import annotations

import pytest
from django.urls import reverse

from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_superuser_sees_each_member_with_roles_on_the_organization_page(client, org, owner, agents_user):
    client.force_login(UserFactory(username="root", is_superuser=True, is_staff=True))

    page = client.get(reverse("admin:organizations_organization_change", args=[org.pk]))

    assert page.status_code == 200
    body = page.content.decode()
    assert "olivia" in body and "alice" in body and "agents-user" in body
    assert 'name="_save"' not in body  # read-only: no save button


def test_staff_who_is_not_a_superuser_cannot_open_the_organization_page(client, org, owner):
    client.force_login(UserFactory(username="staff", is_staff=True))

    page = client.get(reverse("admin:organizations_organization_change", args=[org.pk]))

    assert page.status_code == 403


def test_organizations_cannot_be_added_through_the_admin(client, db):
    client.force_login(UserFactory(username="root", is_superuser=True, is_staff=True))

    assert client.get(reverse("admin:organizations_organization_add")).status_code == 403
