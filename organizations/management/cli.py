"""Shared pieces of the operator CLI: the actor, error translation, dry runs and plain-text output."""

from __future__ import annotations

import getpass
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

from django.core.exceptions import ObjectDoesNotExist, PermissionDenied, ValidationError
from django.core.management.base import CommandError
from django.db import transaction

from audit.services import SystemActor
from organizations.models import Organization
from organizations.selectors import organization_get
from organizations.services import RoleChange

T = TypeVar("T")

DRY_RUN_NOTE = "dry run: nothing written"


def organization_by_slug(slug: str) -> Organization:
    """The organization with this slug, or CommandError naming it."""
    try:
        return organization_get(slug=slug)
    except Organization.DoesNotExist:
        raise CommandError(f"No organization with the slug {slug!r}: see `manage.py orgs list`.") from None


def operator_actor() -> SystemActor:
    """The audit actor for the CLI: the operating-system user who runs it (shell access is the credential)."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (some containers)
        name = "operator"
    return SystemActor(name=f"cli:{name}")


def validation_message(error: ValidationError) -> str:
    """The messages of a ValidationError in one line (each message already names the bad value)."""
    return "; ".join(error.messages)


@contextmanager
def command_errors() -> Iterator[None]:
    """Turn the errors a user can fix (unknown names, refused values, missing rights) into CommandError."""
    try:
        yield
    except ValidationError as exc:
        raise CommandError(validation_message(exc)) from exc
    except ObjectDoesNotExist as exc:
        raise CommandError(str(exc) or "not found") from exc
    except PermissionDenied as exc:
        raise CommandError(str(exc) or "permission denied") from exc


def run_write(write: Callable[[], T], *, dry_run: bool) -> T:
    """Run a service call; on a dry run, inside a transaction that is rolled back, so nothing is written.

    Running the real service keeps every check (names, permissions, last-owner guard) and the
    computed diff identical between the dry run and the real one.
    """
    if not dry_run:
        return write()
    with transaction.atomic():
        result = write()
        transaction.set_rollback(True)
    return result


def change_lines(change: RoleChange, *, username: str | None = None) -> list[str]:
    """One greppable line per added ("alice: + auditor") or revoked ("alice: - auditor") role, or "no change"."""
    name = username if username is not None else change.username
    if not change.changed:
        return [f"{name}: no change"]
    return [f"{name}: + {role}" for role in change.added] + [f"{name}: - {role}" for role in change.revoked]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain, left-aligned table with two spaces between columns (no borders, easy to grep and cut)."""
    widths = [len(header) for header in headers]
    for row in rows:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in [headers, *rows]
    )
