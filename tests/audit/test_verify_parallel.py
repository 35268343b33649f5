"""Long PostgreSQL chains are checked by several processes; they must find exactly what one pass finds."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from audit.models import AuditEvent
from audit.verify import verify_chain
from tests.audit.conftest import record_mixed_chain, tampering

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def delete(*sequences: int) -> Callable:
    """Remove these events."""
    return lambda events: events.filter(sequence__in=sequences).delete()


def update(sequence: int, **fields: object) -> Callable:
    """Overwrite fields of one event."""
    return lambda events: events.filter(sequence=sequence).update(**fields)


def swap(first: int, second: int) -> Callable:
    """Exchange two events' sequence numbers."""

    def run(events) -> None:
        a, b = events.get(sequence=first).pk, events.get(sequence=second).pk
        events.filter(pk=a).update(sequence=-1)
        events.filter(pk=b).update(sequence=first)
        events.filter(pk=a).update(sequence=second)

    return run


# With 12 events and 3 workers the ranges are #1-4, #5-8 and #9-12: several cases sit on their edges.
TAMPERING = {
    "untouched": lambda events: None,
    "altered inside a range": update(6, data={"chars": 0}),
    "altered first of a range": update(5, data={"chars": 0}),
    "removed first of a range": delete(5),
    "removed last of a range": delete(4),
    "removed across ranges": delete(4, 5),
    "swapped across ranges": swap(4, 5),
    "prev_hash changed on first of a range": update(9, prev_hash="0" * 64),
    "removed last event": delete(12),
}


@pytest.mark.parametrize("tamper", TAMPERING.values(), ids=TAMPERING.keys())
def test_split_verification_reports_what_a_single_pass_reports(org, agents_user, tamper):
    record_mixed_chain(org, agents_user, count=12)
    with tampering():
        tamper(AuditEvent.objects.filter(organization=org))

    single = verify_chain(organization=org, workers=1)
    split = verify_chain(organization=org, workers=3)

    assert split == single


def test_split_verification_of_an_intact_chain_counts_every_event(org, agents_user):
    record_mixed_chain(org, agents_user, count=12)

    result = verify_chain(organization=org, workers=5)

    assert (result.ok, result.events_checked, result.head_sequence) == (True, 12, 12)
