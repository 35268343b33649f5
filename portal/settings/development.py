"""Embedded default: runs with nothing set (SQLite in the data folder, in-memory channel layer)."""

from __future__ import annotations

import os

from cryptography.fernet import Fernet
from django.core.management.utils import get_random_secret_key

from portal.settings.base import *  # noqa: F403
from portal.settings.base import DATA_DIR
from portal.settings.env import env_bool, env_list, env_str


def _persistent_secret(filename: str, make: callable) -> str:
    """Generate a secret once and keep it in the data folder, so restarts keep sessions and keys."""
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    path = DATA_DIR / filename
    if not path.exists():
        path.write_text(make())
        os.chmod(path, 0o600)
    return path.read_text().strip()


def _new_signing_key() -> str:
    from audit.signing import generate_key

    return generate_key()


DEBUG = env_bool("AIRLOCK_DEBUG", True)
SECRET_KEY = env_str("AIRLOCK_SECRET_KEY") or _persistent_secret("secret_key", get_random_secret_key)
AIRLOCK_ENCRYPTION_KEYS = env_list("AIRLOCK_ENCRYPTION_KEYS") or [
    _persistent_secret("encryption_key", lambda: Fernet.generate_key().decode())
]
AIRLOCK_AUDIT_SIGNING_KEY = env_str("AIRLOCK_AUDIT_SIGNING_KEY") or _persistent_secret(
    "audit_signing_key", _new_signing_key
)
# The embedded demo on a laptop: an organization without templates runs commands in a plain directory (not a
# sandbox) unless told otherwise; `make run` gives the demo a bubblewrap template where the host can start one.
WORKSPACE_DEFAULT_BACKEND = env_str("AIRLOCK_WORKSPACE_DEFAULT_BACKEND", "local")
