"""Health checks that load balancers and orchestrators poll."""

from __future__ import annotations

import pytest
from django.test import Client


def test_healthz_answers_json_ok() -> None:
    response = Client().get("/healthz")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["status"] == "ok"


@pytest.mark.django_db
def test_readyz_reports_database_and_channel_layer_ok() -> None:
    response = Client().get("/readyz")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["channel_layer"] == "ok"
    assert "broker" in body["checks"]


def test_healthz_refuses_post() -> None:
    response = Client().post("/healthz")

    assert response.status_code == 405


def test_the_api_schema_is_for_signed_in_users_only(client, django_user_model):
    assert client.get("/api/v1/schema/").status_code in (401, 403)
    client.force_login(django_user_model.objects.create_user(username="reader", password="x" * 20))

    answer = client.get("/api/v1/schema/")

    assert answer.status_code == 200 and b"/api/v1/orgs/" in answer.content
