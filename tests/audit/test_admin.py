"""The admin shows audit events read-only: no way to add, change or delete one."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission

from audit.models import AuditEvent
from tests.audit.conftest import record_mixed_chain
from tests.factories import UserFactory, make_member

LIST_URL = "/admin/audit/auditevent/"


@pytest.fixture
def logs(org, other_org, agents_user, outsider) -> None:
    """Four events in acme, two in globex."""
    record_mixed_chain(org, agents_user, count=4)
    record_mixed_chain(other_org, outsider, count=2)


@pytest.fixture
def superuser(db):
    """The deployment owner."""
    return UserFactory(username="root", is_staff=True, is_superuser=True)


def test_superuser_lists_events_filtered_by_organization_action_and_outcome(client, logs, superuser, org):
    client.force_login(superuser)

    page = client.get(LIST_URL, {"organization__id__exact": org.pk, "action": "model.call", "outcome": "success"})

    assert page.status_code == 200
    assert list(page.context["cl"].result_list) == list(AuditEvent.objects.filter(organization=org, sequence=2))


def test_event_page_is_read_only(client, logs, superuser, org):
    client.force_login(superuser)
    event = AuditEvent.objects.get(organization=org, sequence=1)
    url = f"{LIST_URL}{event.pk}/change/"

    page = client.get(url)

    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    assert client.post(url, {"action": "forged"}).status_code == 403
    assert AuditEvent.objects.get(pk=event.pk).action == "prompt.submitted"


def test_adding_or_deleting_an_event_is_forbidden(client, logs, superuser, org):
    client.force_login(superuser)
    event = AuditEvent.objects.get(organization=org, sequence=1)

    assert client.get(f"{LIST_URL}add/").status_code == 403
    assert client.post(f"{LIST_URL}{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_staff_auditor_sees_only_their_organizations_events(client, logs, org, other_org):
    staff = UserFactory(username="steve", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_auditevent"))
    make_member(org, staff, "auditor")
    client.force_login(staff)

    page = client.get(LIST_URL)

    assert page.status_code == 200
    assert {event.organization_id for event in page.context["cl"].result_list} == {org.pk}
    assert other_org.slug not in page.content.decode()


def viewed(organization) -> list[dict]:
    """The data of the organization's `audit.viewed` events, oldest first."""
    return list(
        AuditEvent.objects.filter(organization=organization, action="audit.viewed")
        .order_by("sequence")
        .values_list("data", flat=True)
    )


def test_reading_the_list_is_audited_in_each_organization_the_page_shows(client, logs, superuser, org, other_org):
    client.force_login(superuser)
    successes = AuditEvent.objects.filter(organization=org, outcome="success").count()

    client.get(LIST_URL, {"organization__id__exact": org.pk, "outcome": "success"})
    client.get(LIST_URL)

    filtered, unfiltered = viewed(org)
    assert filtered["view"] == "admin.list"
    assert filtered["filters"] == {"organization__id__exact": str(org.pk), "outcome": "success"}
    assert filtered["page"]["returned"] == successes
    assert unfiltered["filters"] == {}
    [globex] = viewed(other_org)  # only the unfiltered page showed its events
    assert globex["page"]["returned"] == 2


def test_reading_one_event_is_audited_with_its_id(client, logs, superuser, org):
    client.force_login(superuser)
    event = AuditEvent.objects.get(organization=org, sequence=3)

    assert client.get(f"{LIST_URL}{event.pk}/change/").status_code == 200

    [read] = viewed(org)
    assert read == {"view": "admin.event", "filters": {}, "event_id": str(event.pk)}


def test_the_destination_admin_never_shows_a_secret_or_a_client_key(client, superuser, org):
    from audit.forwarding.services import destination_create
    from tests.fakes.siem import self_signed_certificate

    certificate, key = self_signed_certificate(hostname="airlock")
    destination = destination_create(
        actor=superuser,
        organization=org,
        name="siem",
        kind="splunk-hec",
        url="https://splunk.internal:8088",
        secret="hec-token-5e6f7a8b9c0d",
        client_certificate=certificate,
        client_key=key,
    )
    client.force_login(superuser)

    page = client.get(f"/admin/audit/auditdestination/{destination.pk}/change/").content.decode()

    assert "siem" in page
    assert "hec-token-5e6f7a8b9c0d" not in page and "gAAAAA" not in page  # no secret, no ciphertext
    assert key.split("-----")[2].strip()[:40] not in page
