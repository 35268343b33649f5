"""Production settings refuse to start without their secrets or with DEBUG on, naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[2]
KEY = Fernet.generate_key().decode()
SIGNING = "M1cwzAxyfT7rlbXQ3o5Nq8qRD8CKUb-2wb9i8JVfAx4="


def start_production(**overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRLOCK_")}
    env.update({"DJANGO_SETTINGS_MODULE": "portal.settings.production", **overrides})
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "CRITICAL"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"AIRLOCK_ENCRYPTION_KEYS": KEY}, "AIRLOCK_SECRET_KEY"),
        ({"AIRLOCK_SECRET_KEY": "x" * 50}, "AIRLOCK_ENCRYPTION_KEYS"),
        ({"AIRLOCK_SECRET_KEY": "x" * 50, "AIRLOCK_ENCRYPTION_KEYS": KEY}, "AIRLOCK_AUDIT_SIGNING_KEY"),
        ({"AIRLOCK_SECRET_KEY": "x" * 50, "AIRLOCK_ENCRYPTION_KEYS": KEY, "AIRLOCK_DEBUG": "1"}, "AIRLOCK_DEBUG"),
    ],
)
def test_production_refuses_to_start_and_names_the_variable(overrides, named):
    result = start_production(**overrides)
    assert result.returncode != 0
    assert named in result.stderr
    assert "ImproperlyConfigured" in result.stderr


def test_production_starts_with_its_secrets(tmp_path):
    result = start_production(
        AIRLOCK_SECRET_KEY="x" * 60,
        AIRLOCK_ENCRYPTION_KEYS=KEY,
        AIRLOCK_AUDIT_SIGNING_KEY=SIGNING,
        DATABASE_URL=f"sqlite:///{tmp_path}/prod.sqlite3",
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("settings_module", ["portal.settings.development", "portal.settings.test"])
def test_the_system_checks_pass_in_a_fresh_process(settings_module, tmp_path):
    """A fresh process imports modules in its own order: an import cycle shows here, not in the test process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRLOCK_", "DATABASE_URL"))}
    env.update(DJANGO_SETTINGS_MODULE=settings_module, AIRLOCK_DATA_DIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
