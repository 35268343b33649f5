"""Signing in with a username and password through the allauth form, and signing out."""

from __future__ import annotations

from django.test import Client

from organizations.models import Organization


def test_login_page_is_branded_and_asks_for_username_and_password(db: None) -> None:
    response = Client().get("/accounts/login/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "Sign in to Airlock" in html
    assert 'name="login"' in html
    assert 'name="password"' in html
    assert "sign up" not in html.lower()


def test_login_with_username_and_password_lands_on_the_org_chat(org: Organization, agents_user) -> None:
    client = Client()

    response = client.post("/accounts/login/", {"login": "alice", "password": "pw-alice"}, follow=True)

    assert response.status_code == 200
    assert response.redirect_chain[-1][0] == "/orgs/acme/chat/"
    assert response.wsgi_request.user.username == "alice"
    assert "Signed in as" in response.content.decode()


def test_login_with_wrong_password_stays_on_the_form_with_an_error(org: Organization, agents_user) -> None:
    client = Client()

    response = client.post("/accounts/login/", {"login": "alice", "password": "wrong"})

    assert response.status_code == 200
    assert "not correct" in response.content.decode()
    assert client.get("/orgs/acme/chat/").status_code == 302


def test_login_respects_next_after_sign_in(org: Organization, agents_user) -> None:
    client = Client()
    login_page = client.get("/orgs/acme/chat/", follow=True)
    assert login_page.redirect_chain[-1][0] == "/accounts/login/?next=/orgs/acme/chat/"

    response = client.post("/accounts/login/?next=/orgs/acme/chat/", {"login": "alice", "password": "pw-alice"})

    assert response.status_code == 302
    assert response["Location"] == "/orgs/acme/chat/"


def test_sign_out_from_the_header_ends_the_session(org: Organization, agents_user) -> None:
    client = Client()
    client.force_login(agents_user)
    page = client.get("/orgs/acme/chat/").content.decode()
    assert 'action="/accounts/logout/"' in page

    response = client.post("/accounts/logout/")

    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/"
    assert client.get("/orgs/acme/chat/")["Location"].startswith("/accounts/login/")


def test_self_signup_is_closed(db: None) -> None:
    response = Client().get("/accounts/signup/")

    assert response.status_code == 200
    assert "sign up is currently closed" in response.content.decode()
    assert 'name="password1"' not in response.content.decode()
