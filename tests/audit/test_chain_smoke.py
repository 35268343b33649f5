"""The audit chain links each event to the one before."""

from audit import record
from audit.chain import GENESIS_HASH
from audit.models import AuditEvent


def test_events_chain_with_gapless_sequences(org, owner):
    first = record(action="org.created", actor=owner, organization=org, target=org)
    second = record(action="member.added", actor=owner, organization=org, data={"user": "x"})

    assert (first.sequence, second.sequence) == (1, 2)
    assert first.prev_hash == GENESIS_HASH
    assert second.prev_hash == first.hash
    assert AuditEvent.objects.filter(organization=org).count() == 2
