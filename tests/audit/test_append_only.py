"""On PostgreSQL the database itself refuses to update or delete an audit event."""

from __future__ import annotations

import pytest
from django.db import DatabaseError, connection, transaction

from audit import record
from audit.models import AuditEvent
from audit.services import SystemActor
from audit.verify import verify_chain
from tests.audit.conftest import record_mixed_chain

pytestmark = pytest.mark.postgres


@pytest.fixture
def chain(org, agents_user) -> list[AuditEvent]:
    """Five events in acme."""
    return record_mixed_chain(org, agents_user, count=5)


def refused(block) -> str:
    """Run a write that must fail, in a savepoint so the test can go on; return the database's message."""
    with pytest.raises(DatabaseError) as caught, transaction.atomic():
        block()
    return str(caught.value)


def test_saving_a_changed_event_is_refused_and_the_row_is_unchanged(org, chain):
    event = AuditEvent.objects.get(organization=org, sequence=3)
    original = (event.data, event.hash)
    event.data = {"rewritten": True}

    message = refused(lambda: event.save())

    assert "audit events are append-only: UPDATE" in message
    reloaded = AuditEvent.objects.get(pk=event.pk)
    assert (reloaded.data, reloaded.hash) == original


def test_queryset_update_is_refused(org, chain):
    message = refused(lambda: AuditEvent.objects.filter(organization=org).update(outcome="denied"))

    assert "append-only" in message
    assert not AuditEvent.objects.filter(organization=org, outcome="denied").exists()


def test_deleting_an_event_is_refused_and_the_row_stays(org, chain):
    event = AuditEvent.objects.get(organization=org, sequence=2)

    message = refused(lambda: event.delete())

    assert "audit events are append-only: DELETE" in message
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_bulk_delete_is_refused_and_every_row_stays(org, chain):
    refused(lambda: AuditEvent.objects.filter(organization=org).delete())

    assert AuditEvent.objects.filter(organization=org).count() == 5


def test_raw_sql_update_is_refused(org, chain):
    def raw_update() -> None:
        with connection.cursor() as cursor:
            cursor.execute("UPDATE audit_auditevent SET action = 'nothing.happened'")

    assert "append-only" in refused(raw_update)


def test_appending_still_works_after_refused_writes(org, chain):
    refused(lambda: AuditEvent.objects.filter(organization=org, sequence=5).delete())

    event = record(action="audit.verified", actor=SystemActor(), organization=org)

    assert event.sequence == 6
    assert verify_chain(organization=org).ok
