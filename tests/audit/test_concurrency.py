"""Concurrent writers queue on the chain head: sequences stay gapless and the chain verifies."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from audit import record
from audit.models import AuditEvent
from audit.services import SystemActor
from audit.verify import verify_chain
from organizations.models import Organization
from tests.factories import OrganizationFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

EVENTS_PER_WRITER = 50


def run_writers(organizations: list[Organization]) -> None:
    """One thread per entry, all released at once, each recording EVENTS_PER_WRITER events in its organization."""
    start = threading.Barrier(len(organizations))
    failures: list[BaseException] = []

    def write(writer: int, organization: Organization) -> None:
        try:
            start.wait(timeout=30)
            for index in range(EVENTS_PER_WRITER):
                record(
                    action="tool.call",
                    actor=SystemActor(f"writer-{writer}"),
                    organization=organization,
                    data={"writer": writer, "index": index},
                )
        except BaseException as exc:  # reported below, with the thread's own traceback
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=write, args=(n, org)) for n, org in enumerate(organizations)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert not any(thread.is_alive() for thread in threads), "a writer hung"
    assert not failures, failures


def sequences(organization: Organization) -> list[int]:
    """The organization's sequence numbers, in order."""
    return list(AuditEvent.objects.filter(organization=organization).values_list("sequence", flat=True))


def test_eight_writers_in_one_organization_get_sequences_1_to_400(org):
    run_writers([org] * 8)

    assert sequences(org) == list(range(1, 401))
    result = verify_chain(organization=org)
    assert (result.ok, result.events_checked, result.head_sequence) == (True, 400, 400), result.reason
    # Each writer's own events keep the order it wrote them in.
    for writer in range(8):
        indexes = list(
            AuditEvent.objects.filter(organization=org, data__writer=writer)
            .order_by("sequence")
            .values_list("data__index", flat=True)
        )
        assert indexes == list(range(EVENTS_PER_WRITER))


def test_eight_writers_over_four_organizations_keep_four_separate_chains(db):
    organizations = [OrganizationFactory(slug=f"tenant-{n}") for n in range(4)]

    run_writers(organizations * 2)

    for organization in organizations:
        assert sequences(organization) == list(range(1, 101))
        result = verify_chain(organization=organization)
        assert (result.ok, result.events_checked) == (True, 100), result.reason
