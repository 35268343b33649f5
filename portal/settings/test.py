"""Test settings: fixed keys, fast hashing; DATABASE_URL / REDIS_URL when set, else SQLite."""

from __future__ import annotations

import os

from portal.settings.base import *  # noqa: F403
from portal.settings.base import DATA_DIR, DATABASES

DEBUG = False
DATA_DIR.mkdir(parents=True, exist_ok=True)
SECRET_KEY = "test-secret-key-not-for-production"  # noqa: S105
AIRLOCK_ENCRYPTION_KEYS = [
    os.environ.get("AIRLOCK_TEST_ENCRYPTION_KEY", "d8CxqPjfH9V0Z8B2v9mSx6yv0eU1c3ZrQ0wQnH4n2hY=")
]
AIRLOCK_AUDIT_SIGNING_KEY = "M1cwzAxyfT7rlbXQ3o5Nq8qRD8CKUb-2wb9i8JVfAx4="
AUDIT_EXPORT_DIR = DATA_DIR / f"test-exports-{os.getpid()}"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
ALLOWED_HOSTS = ["*"]
WORKSPACES_ROOT = DATA_DIR / "test-workspaces"
WORKSPACE_COMMAND_TIMEOUT_SECONDS = 20
# Tests of organizations without templates run commands in a plain directory; sandbox tests use templates.
WORKSPACE_DEFAULT_BACKEND = os.environ.get("AIRLOCK_WORKSPACE_DEFAULT_BACKEND") or "local"
AGENT_DELTA_FLUSH_MS = 10
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not memory, so that a live server in another process shares the test database.
    # One file per test process, so that parallel runs on one machine do not share it.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / f"test-{os.getpid()}.sqlite3")}
elif os.environ.get("AIRLOCK_TEST_DB_NAME"):
    DATABASES["default"]["TEST"] = {"NAME": os.environ["AIRLOCK_TEST_DB_NAME"]}
# In-process tests run turns inline; the live-server fixture picks the runner of the configuration it starts.
AGENT_RUNNER = os.environ.get("AIRLOCK_AGENT_RUNNER", "inline")
# Tests that want the embedded scheduler start a server with AIRLOCK_EMBEDDED_SCHEDULER=1.
EMBEDDED_SCHEDULER = os.environ.get("AIRLOCK_EMBEDDED_SCHEDULER", "") == "1"
