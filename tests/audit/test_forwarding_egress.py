"""SIEM destinations cannot reach link-local or cloud metadata addresses, nor the networks the operator blocks."""

from __future__ import annotations

import ipaddress

import pytest
from django.core.exceptions import ValidationError

from audit import record
from audit.forwarding.delivery import deliver_destination
from audit.forwarding.services import destination_create, destination_test
from audit.models import AuditDestination, AuditEvent
from tests.api import api

WEBHOOK_SECRET = "whsec-egress-0123456789abcdef"
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


pytestmark = pytest.mark.usefixtures("fast_forwarding")


@pytest.mark.parametrize(
    "target",
    [
        "https://169.254.169.254/latest/meta-data/",
        "https://[fd00:ec2::254]/latest/meta-data/",
        "https://[::ffff:169.254.169.254]/",
        "https://0.0.0.0:8088/",
        "https://100.100.100.200/",
        "https://168.63.129.16/",
        # IPv6 forms carrying 169.254.169.254: NAT64, 6to4, IPv4-compatible
        "https://[64:ff9b::a9fe:a9fe]/",
        "https://[2002:a9fe:a9fe::1]/",
        "https://[::a9fe:a9fe]/",
        "https://[::ffff:0:a9fe:a9fe]/",
        "https://[64:ff9b:1:0:a9:fea9:fe00:0]/",  # a local-use NAT64 prefix of 64 bits
        "https://[fd20:ce::254]/",
        # IPv4 shorthands resolvers accept
        "https://2852039166/",
        "https://0xa9fea9fe/",
        "https://169.254.43518/",
        "https://0251.0376.0251.0376/",
    ],
)
def test_a_metadata_or_link_local_url_is_refused_with_the_reason(org, owner, target) -> None:
    response = api(owner).post(
        f"/api/v1/orgs/{org.slug}/audit/destinations/",
        {"name": "meta", "kind": "webhook", "url": target, "secret": WEBHOOK_SECRET},
        format="json",
    )

    assert response.status_code == 400, response.content
    message = response.json()["url"][0]
    assert "a network SIEM destinations may not reach" in message
    assert "AIRLOCK_AUDIT_DESTINATION_BLOCKED_NETWORKS" in message
    assert not AuditDestination.objects.filter(organization=org).exists()


def test_a_syslog_host_in_a_blocked_network_is_refused(org, owner) -> None:
    with pytest.raises(ValidationError) as refused:
        destination_create(actor=owner, organization=org, name="meta", kind="syslog", host="169.254.169.254", port=514)

    assert "169.254.169.254 lies in 169.254.0.0/16" in str(refused.value.message_dict["host"])


def test_the_operator_blocks_this_machine_and_localhost_is_refused_too(org, owner, settings) -> None:
    settings.AUDIT_DESTINATION_BLOCKED_NETWORKS = LOOPBACK

    for host in ("127.0.0.1", "localhost", "::1"):
        with pytest.raises(ValidationError, match="127.0.0.0/8|::1/128"):
            destination_create(actor=owner, organization=org, name=f"local-{host}", kind="syslog", host=host, port=514)
    with pytest.raises(ValidationError, match="127.0.0.0/8"):
        destination_create(
            actor=owner, organization=org, name="web", kind="webhook", url="http://127.0.0.1:9/", secret=WEBHOOK_SECRET
        )


def test_delivery_checks_the_resolved_address_and_sends_nothing_to_a_blocked_one(org, owner, settings, webhook) -> None:
    destination = destination_create(
        actor=owner,
        organization=org,
        name="web",
        kind="webhook",
        url=f"http://localhost:{webhook.port}/hook",
        secret=WEBHOOK_SECRET,
    )
    record(action="prompt.submitted", actor=owner, organization=org, data={"n": 1})
    assert deliver_destination(destination.pk).ok
    delivered = len(webhook.events)

    settings.AUDIT_DESTINATION_BLOCKED_NETWORKS = LOOPBACK  # the operator tightens the rules later
    record(action="prompt.submitted", actor=owner, organization=org, data={"n": 2})
    result = deliver_destination(destination.pk)

    destination.refresh_from_db()
    assert not result.ok
    assert "lies in 127.0.0.0/8, a network SIEM destinations may not reach" in destination.last_error
    assert len(webhook.events) == delivered
    assert destination.delivered_sequence < AuditEvent.objects.filter(organization=org).count()


def test_a_syslog_test_message_to_a_now_blocked_receiver_fails_and_says_why(org, owner, settings, syslog) -> None:
    destination = destination_create(
        actor=owner, organization=org, name="syslog", kind="syslog", host="localhost", port=syslog.port
    )
    settings.AUDIT_DESTINATION_BLOCKED_NETWORKS = LOOPBACK

    probe = destination_test(actor=owner, destination=destination)

    assert not probe.ok
    assert "a network SIEM destinations may not reach" in probe.error
    assert syslog.events == []


def test_a_bad_network_in_the_setting_stops_start_up_naming_it(monkeypatch) -> None:
    from django.core.exceptions import ImproperlyConfigured

    from portal.settings.env import env_networks

    monkeypatch.setenv("AIRLOCK_AUDIT_DESTINATION_BLOCKED_NETWORKS", "10.0.0.0/8, intranet")

    with pytest.raises(ImproperlyConfigured, match="'intranet' is not a network"):
        env_networks("AIRLOCK_AUDIT_DESTINATION_BLOCKED_NETWORKS")


def test_an_operator_network_also_covers_the_ipv6_forms_that_reach_it(settings) -> None:
    from audit.forwarding.egress import blocking_network

    assert blocking_network("64:ff9b:1:a00:5::") is None  # not yet: 10.0.0.5 behind a /48 local NAT64 prefix
    settings.AUDIT_DESTINATION_BLOCKED_NETWORKS = (ipaddress.ip_network("10.0.0.0/8"),)

    carriers = ("::ffff:10.0.0.5", "64:ff9b::a00:5", "64:ff9b:1::a00:5", "64:ff9b:1:a00:5::", "2002:a00:5::1")
    for address in ("10.0.0.5", *carriers, "::a00:5", "::ffff:0:a00:5"):
        assert str(blocking_network(address)) == "10.0.0.0/8", address
    assert blocking_network("2001:db8::a00:5") is None
    assert blocking_network("11.0.0.1") is None
