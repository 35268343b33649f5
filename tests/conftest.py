"""Shared fixtures: users, organizations with role-holding members, database vendor checks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from asgiref.sync import sync_to_async
from django.db import connection, connections

from organizations.models import Organization, Role
from providers.simulator import ModelSimulator
from tests.factories import OrganizationFactory, UserFactory, make_member
from tests.fakes.siem import HttpReceiver
from tests.idp.fixtures import oidc_idp, sso  # noqa: F401 - fixtures
from tests.livesrv import live_portal, portal_processes, session_simulator  # noqa: F401 - fixtures


@pytest.fixture
def simulator() -> Iterator[ModelSimulator]:
    """The offline model simulator on loopback (OpenAI and Anthropic wire protocols), needing no key."""
    with ModelSimulator() as sim:
        yield sim


@pytest.fixture
def webhook() -> Iterator[HttpReceiver]:
    """A webhook receiver on loopback (taken down after the test)."""
    receiver = HttpReceiver("webhook").start()
    yield receiver
    receiver.stop()


@pytest.fixture
async def close_async_orm_connections():
    """For async tests: the async ORM runs in asgiref's worker thread, whose connection is closed afterwards."""
    yield
    await sync_to_async(connections.close_all)()


@pytest.fixture
def org(db: None) -> Organization:
    """An organization named acme."""
    return OrganizationFactory(slug="acme", name="Acme")


@pytest.fixture
def other_org(db: None) -> Organization:
    """A second tenant, to prove isolation."""
    return OrganizationFactory(slug="globex", name="Globex")


@pytest.fixture
def owner(org: Organization):
    """The owner of acme."""
    user = UserFactory(username="olivia")
    make_member(org, user, Role.OWNER)
    return user


@pytest.fixture
def agents_user(org: Organization):
    """A member of acme who may run agents."""
    user = UserFactory(username="alice")
    make_member(org, user, Role.AGENTS_USER)
    return user


@pytest.fixture
def auditor(org: Organization):
    """A read-only auditor of acme."""
    user = UserFactory(username="audrey")
    make_member(org, user, Role.AUDITOR)
    return user


@pytest.fixture
def plain_member(org: Organization):
    """A member of acme with no special role."""
    user = UserFactory(username="mallory")
    make_member(org, user, Role.MEMBER)
    return user


@pytest.fixture
def outsider(other_org: Organization):
    """An agents user of another organization."""
    user = UserFactory(username="oscar")
    make_member(other_org, user, Role.OWNER, Role.AGENTS_USER)
    return user


@pytest.fixture(autouse=True)
def fresh_audit_policy_cache() -> Iterator[None]:
    """The per-process content-policy cache must not outlive a test (SQLite reuses organization ids)."""
    from audit.policy import invalidate_policy

    invalidate_policy()
    yield
    invalidate_policy()


def is_postgres() -> bool:
    """Whether the tests run on PostgreSQL."""
    return connection.vendor == "postgresql"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip PostgreSQL-only tests on SQLite, saying why."""
    if is_postgres():
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL (set DATABASE_URL); runs on SQLite otherwise skipped")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)
