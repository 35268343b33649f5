"""Helpers for the organizations tests: run a management command, read an organization's audit chain."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from audit.chain import GENESIS_HASH, chain_hash, event_document
from audit.models import AuditChainHead, AuditEvent
from organizations.models import Membership, Organization


@dataclass
class Output:
    """What a command printed."""

    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        """Standard output, line by line."""
        return self.stdout.splitlines()


def run(*args: str) -> Output:
    """Run `manage.py <args>` in-process and return what it printed."""
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return Output(out.getvalue(), err.getvalue())


def run_fails(*args: str) -> str:
    """Run a command that must fail with a CommandError (non-zero exit); return its message."""
    with pytest.raises(CommandError) as failure:
        run(*args)
    return str(failure.value)


def roles_of(organization: Organization, username: str) -> list[str]:
    """A member's roles as stored now."""
    return Membership.objects.get(organization=organization, user__username=username).roles


def events(organization: Organization, *actions: str) -> list[AuditEvent]:
    """The organization's audit events in order (only the given actions, if any)."""
    found = AuditEvent.objects.filter(organization=organization).order_by("sequence")
    if actions:
        found = found.filter(action__in=actions)
    return list(found)


def assert_chain_intact(organization: Organization) -> None:
    """Sequences run 1..n, each event links to the previous hash and re-hashes to its own, the head is the last."""
    chain = events(organization)
    assert [event.sequence for event in chain] == list(range(1, len(chain) + 1))
    previous = GENESIS_HASH
    for event in chain:
        assert event.prev_hash == previous, f"event #{event.sequence} does not link to #{event.sequence - 1}"
        assert event.hash == chain_hash(previous, event_document(event)), f"event #{event.sequence} was altered"
        previous = event.hash
    head = AuditChainHead.objects.get(organization=organization)
    assert (head.sequence, head.hash) == (len(chain), previous)
