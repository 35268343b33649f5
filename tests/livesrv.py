"""A real running portal for end-to-end tests: daphne (and a Celery worker on Redis) in subprocesses.

The servers share the test database with the test process, so rows the test commits are what they see.
With REDIS_URL set, the configuration is production's shape: Redis channel layer and the "celery" runner.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from organizations.models import Organization, Role
from providers.models import LanguageModel
from providers.simulator import ModelSimulator
from tests.factories import LanguageModelFactory, OrganizationFactory, ProviderFactory, UserFactory, make_member

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _database_url() -> str:
    db = settings.DATABASES["default"]
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    user, host, port = db.get("USER") or "postgres", db.get("HOST") or "127.0.0.1", db.get("PORT") or 5432
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"


DAPHNE = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", "0", "portal.asgi:application"]


def daphne_url(process: subprocess.Popen, log: Path, timeout: float = 30) -> str:
    """The URL of a daphne started with DAPHNE (port 0: the system picks it when binding), once it answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listening = re.search(r"Listening on TCP address (127\.0\.0\.1:\d+)", log.read_text())
        if listening:
            url = f"http://{listening[1]}"
            _wait_for_http(f"{url}/healthz", process, log, timeout=max(1.0, deadline - time.monotonic()))
            return url
        if process.poll() is not None:
            raise RuntimeError(f"daphne exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        time.sleep(0.1)
    raise RuntimeError(f"daphne did not listen within {timeout}s:\n{log.read_text()[-4000:]}")


def _wait_for_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - loopback URL built here
                return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.1)
    raise RuntimeError(f"server did not answer {url} within {timeout}s:\n{log.read_text()[-4000:]}")


@dataclass
class PortalProcesses:
    """The running servers."""

    url: str
    runner: str
    processes: list[subprocess.Popen]
    logs: list[Path]

    def log_tail(self) -> str:
        """The end of every server log, for failure messages."""
        return "\n".join(f"== {log.name}\n{log.read_text()[-3000:]}" for log in self.logs if log.exists())


@pytest.fixture(scope="session")
def portal_processes(
    django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PortalProcesses]:
    """Start daphne (and a Celery worker when Redis is configured) against the test database."""
    with django_db_blocker.unblock():
        database_url = _database_url()
    logs_dir = tmp_path_factory.mktemp("portal-logs")
    run_id = uuid.uuid4().hex[:8]
    runner = "celery" if settings.REDIS_URL else "inline"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "portal.settings.test",
        "DATABASE_URL": database_url,
        "AIRLOCK_AGENT_RUNNER": runner,
        "AIRLOCK_CHANNEL_PREFIX": f"airlock-test-{run_id}",
        "AIRLOCK_CELERY_QUEUE": f"airlock-test-{run_id}",
        "PYTHONUNBUFFERED": "1",
    }
    commands = [("daphne", DAPHNE)]
    if runner == "celery":
        commands.append(
            (
                "celery",
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "portal",
                    "worker",
                    "-Q",
                    env["AIRLOCK_CELERY_QUEUE"],
                    "-c",
                    "2",
                    "-l",
                    "warning",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                ],
            )
        )
    processes, logs = [], []
    for name, command in commands:
        log = logs_dir / f"{name}.log"
        processes.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT))
        logs.append(log)
    try:
        url = daphne_url(processes[0], logs[0])
        yield PortalProcesses(url=url, runner=runner, processes=processes, logs=logs)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="session")
def session_simulator() -> Iterator[ModelSimulator]:
    """One offline model simulator for the whole run (reset by each test that uses it)."""
    with ModelSimulator() as simulator:
        yield simulator


@dataclass
class LivePortal:
    """A running portal with an organization, an agents user and a model on the simulator."""

    url: str
    runner: str
    simulator: ModelSimulator
    org: Organization
    user: Any
    model: LanguageModel
    processes: PortalProcesses

    @property
    def ws_url(self) -> str:
        """The websocket base URL."""
        return self.url.replace("http://", "ws://", 1)

    def client(self, username: str | None = None, password: str | None = None) -> PortalClient:
        """An HTTP client logged in through the real login form."""
        username = username or self.user.get_username()
        return PortalClient(self.url, username, password or f"pw-{username}")


@pytest.fixture
def live_portal(
    transactional_db: None, portal_processes: PortalProcesses, session_simulator: ModelSimulator
) -> LivePortal:
    """The running portal plus committed rows: org acme, user alice (owner, agents user), a simulator model."""
    session_simulator.reset()
    org = OrganizationFactory(slug="acme", name="Acme")
    user = UserFactory(username="alice")
    make_member(org, user, Role.OWNER, Role.AGENTS_USER)
    provider = ProviderFactory(
        organization=org, name="Offline simulator", base_url=session_simulator.base_url, is_simulator=True
    )
    model = LanguageModelFactory(provider=provider, identifier="airlock-sim", display_name="Simulator", is_default=True)
    return LivePortal(
        url=portal_processes.url,
        runner=portal_processes.runner,
        simulator=session_simulator,
        org=org,
        user=user,
        model=model,
        processes=portal_processes,
    )


class PortalClient:
    """Talks to the live portal like a browser: session cookie from the login form, CSRF header on writes."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base_url = base_url
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))
        self._login(username, password)

    def cookie(self, name: str) -> str:
        """A cookie's value, or ''."""
        return next((c.value for c in self.cookies if c.name == name), "")

    @property
    def cookie_header(self) -> str:
        """The Cookie header a websocket handshake should carry."""
        return "; ".join(f"{c.name}={c.value}" for c in self.cookies)

    def _login(self, username: str, password: str) -> None:
        self.opener.open(f"{self.base_url}/accounts/login/").read()
        body = urllib.parse.urlencode(
            {"login": username, "password": password, "csrfmiddlewaretoken": self.cookie(settings.CSRF_COOKIE_NAME)}
        ).encode()
        request = urllib.request.Request(
            f"{self.base_url}/accounts/login/", data=body, headers={"Referer": f"{self.base_url}/accounts/login/"}
        )
        self.opener.open(request).read()
        if not self.cookie(settings.SESSION_COOKIE_NAME):
            raise AssertionError(f"login as {username} failed")

    def request(self, method: str, path: str, payload: dict | None = None) -> tuple[int, Any]:
        """Send a JSON request; returns (status, decoded body)."""
        data = json.dumps(payload).encode() if payload is not None else None
        headers = {
            "Content-Type": "application/json",
            "X-CSRFToken": self.cookie(settings.CSRF_COOKIE_NAME),
            "Referer": self.base_url + "/",
        }
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with self.opener.open(request) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            body = error.read()
            try:
                return error.code, json.loads(body)
            except ValueError:
                return error.code, body.decode(errors="replace")


def is_postgres() -> bool:
    """Whether the tests run on PostgreSQL."""
    return connection.vendor == "postgresql"
