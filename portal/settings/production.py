"""Production: refuses to start without its secrets or with DEBUG on."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

from portal.settings.base import *  # noqa: F403
from portal.settings.env import env_bool, env_list, env_str

if env_bool("AIRLOCK_DEBUG", False):
    raise ImproperlyConfigured("AIRLOCK_DEBUG is on: production settings refuse to start with DEBUG enabled.")
DEBUG = False
SECRET_KEY = env_str("AIRLOCK_SECRET_KEY", required=True)
AIRLOCK_ENCRYPTION_KEYS = env_list("AIRLOCK_ENCRYPTION_KEYS")
if not AIRLOCK_ENCRYPTION_KEYS:
    raise ImproperlyConfigured(
        "Set the environment variable AIRLOCK_ENCRYPTION_KEYS: comma-separated Fernet keys, the first encrypts."
    )
AIRLOCK_AUDIT_SIGNING_KEY = env_str("AIRLOCK_AUDIT_SIGNING_KEY", required=True)
SESSION_COOKIE_SECURE = env_bool("AIRLOCK_SECURE_COOKIES", True)
CSRF_COOKIE_SECURE = env_bool("AIRLOCK_SECURE_COOKIES", True)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SERVE_STATIC = env_bool("AIRLOCK_SERVE_STATIC", False)
