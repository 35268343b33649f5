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
