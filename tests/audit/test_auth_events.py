"""Sign-in, sign-out and failed sign-in are audited in each of the user's organizations, never with a password."""

from __future__ import annotations

import logging

from django.test import Client

from audit.models import AuditEvent
from organizations.models import Role
from tests.audit.conftest import everything_stored
from tests.factories import UserFactory, make_member

ORIGIN = {"REMOTE_ADDR": "203.0.113.7", "HTTP_USER_AGENT": "Mozilla/5.0 (AuditTest)"}


def _sign_in(client: Client, username: str, password: str):
    return client.post("/accounts/login/", {"login": username, "password": password}, **ORIGIN)


def test_sign_in_is_audited_with_method_address_and_browser(org, agents_user):
    response = _sign_in(Client(), "alice", "pw-alice")

    assert response.status_code == 302
    event = AuditEvent.objects.get(organization=org, action="auth.login")
    assert (event.actor_display, event.outcome, event.auth_method) == ("alice", "success", "password")
    assert (event.source_ip, event.user_agent) == ("203.0.113.7", "Mozilla/5.0 (AuditTest)")
    assert event.request_id == response["X-Request-Id"]
    assert event.data == {"username": "alice", "method": "password"}
    assert "pw-alice" not in everything_stored()


def test_sign_in_is_written_into_every_organization_of_the_user_with_one_request_id(org, other_org, agents_user):
    make_member(other_org, agents_user, Role.MEMBER)

    _sign_in(Client(), "alice", "pw-alice")

    events = list(AuditEvent.objects.filter(action="auth.login").order_by("organization__slug"))
    assert [event.organization.slug for event in events] == ["acme", "globex"]
    assert len({event.request_id for event in events}) == 1


def test_sign_out_is_audited(org, agents_user):
    client = Client()
    _sign_in(client, "alice", "pw-alice")

    response = client.post("/accounts/logout/", **ORIGIN)

    assert response.status_code == 302
    event = AuditEvent.objects.get(organization=org, action="auth.logout")
    assert (event.actor_display, event.source_ip, event.user_agent) == (
        "alice",
        "203.0.113.7",
        "Mozilla/5.0 (AuditTest)",
    )
    assert event.sequence == AuditEvent.objects.get(organization=org, action="auth.login").sequence + 1


def test_failed_sign_in_names_the_username_tried_and_never_the_password(org, agents_user):
    response = _sign_in(Client(), "alice", "Wr0ng-Secret-Guess")

    assert response.status_code == 200
    event = AuditEvent.objects.get(organization=org, action="auth.login_failed")
    assert (event.outcome, event.actor_display, event.source_ip) == ("failure", "alice", "203.0.113.7")
    assert event.user_agent == "Mozilla/5.0 (AuditTest)"
    assert event.data["username_tried"] == "alice"
    assert event.error
    assert "Wr0ng-Secret-Guess" not in everything_stored()
    assert not AuditEvent.objects.filter(action="auth.login").exists()


def test_failed_sign_in_for_an_unknown_username_is_logged_not_audited(org, agents_user, caplog):
    with caplog.at_level(logging.WARNING, logger="audit.auth_events"):
        _sign_in(Client(), "nobody-here", "Some-Password-123")

    assert not AuditEvent.objects.exists()
    assert "nobody-here" in caplog.text
    assert "203.0.113.7" in caplog.text
    assert "Some-Password-123" not in caplog.text


def test_sign_in_of_a_user_without_organization_writes_no_event(db):
    UserFactory(username="loner")

    response = _sign_in(Client(), "loner", "pw-loner")

    assert response.status_code == 302
    assert not AuditEvent.objects.exists()
