"""Settings shared by every configuration; every value comes from the environment."""

from __future__ import annotations

from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from portal.settings.env import env_bool, env_float, env_int, env_list, env_networks, env_str

BASE_DIR = Path(__file__).resolve().parent.parent.parent
DATA_DIR = Path(env_str("AIRLOCK_DATA_DIR", str(BASE_DIR / "data")))

AIRLOCK_VERSION = "0.1.0"
AIRLOCK_PRODUCT = "Airlock"

DEBUG = env_bool("AIRLOCK_DEBUG", False)
ALLOWED_HOSTS = env_list("AIRLOCK_ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env_list("AIRLOCK_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "guardian",
    "channels",
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "allauth.socialaccount",
    "allauth.socialaccount.providers.openid_connect",
    "portal",
    "organizations",
    "audit",
    "providers",
    "workspaces",
    "agents",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "portal.middleware.RefuseNulInQueryMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "audit.middleware.AuditContextMiddleware",
]

ROOT_URLCONF = "portal.urls"
ASGI_APPLICATION = "portal.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "portal" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def database_settings(default_sqlite_path: Path) -> dict:
    """PostgreSQL (or any URL) from DATABASE_URL, else SQLite in the data folder."""
    url = env_str("DATABASE_URL")
    if url:
        config = dj_database_url.parse(url, conn_max_age=env_int("AIRLOCK_DB_CONN_MAX_AGE", 0))
    else:
        config = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(default_sqlite_path)}
    if config["ENGINE"] == "django.db.backends.sqlite3":
        # IMMEDIATE makes concurrent writers queue for the lock instead of failing mid-transaction.
        config.setdefault("OPTIONS", {}).update({"transaction_mode": "IMMEDIATE", "timeout": 30})
    return config


DATABASES = {"default": database_settings(DATA_DIR / "airlock.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL")
CHANNEL_PREFIX = env_str("AIRLOCK_CHANNEL_PREFIX", "airlock")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # The default capacity (100) overflows on a fast token stream; deltas are batched too.
            "CONFIG": {"hosts": [REDIS_URL], "capacity": 2000, "expiry": 60, "prefix": CHANNEL_PREFIX},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 2000}}}

# How agent turns run: "inline" (asyncio task in the web process) or "celery" (a worker).
AGENT_RUNNER = env_str("AIRLOCK_AGENT_RUNNER", "celery" if REDIS_URL else "inline")
CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_TASK_DEFAULT_QUEUE = env_str("AIRLOCK_CELERY_QUEUE", "airlock")
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Celery beat (run `celery -A portal beat` once per deployment): daily signed audit checkpoints, then the retention
# purge (every organization with retention set; a purge never removes the newest checkpoint's event).
CELERY_BEAT_SCHEDULE = {
    "audit-write-checkpoints": {"task": "audit.write_checkpoints", "schedule": 24 * 60 * 60},
    "audit-purge-expired": {"task": "audit.purge_expired", "schedule": 24 * 60 * 60},
    # Catch-up sweep for SIEM destinations (delivery is also woken after every committed event).
    "audit-forward-all-due": {"task": "audit.forward_all_due", "schedule": 15.0},
    # Batched chaining: chain pending events a lost wake-up left behind (a no-op query in immediate mode).
    "audit-chain-pending-all": {"task": "audit.chain_pending_all", "schedule": 5.0},
    # Stop idle workspaces and delete the files of long-stopped ones (a no-op unless AIRLOCK_WORKSPACE_IDLE_DAYS).
    "workspaces-prune": {"task": "workspaces.prune", "schedule": 24 * 60 * 60},
}
# No broker, no beat: the web process runs CELERY_BEAT_SCHEDULE itself (portal/scheduler.py).
EMBEDDED_SCHEDULER = env_bool("AIRLOCK_EMBEDDED_SCHEDULER", AGENT_RUNNER == "inline")

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
    "guardian.backends.ObjectPermissionBackend",
]
ACCOUNT_LOGIN_METHODS = {"username"}
ACCOUNT_SIGNUP_FIELDS = ["username*", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = "none"
ACCOUNT_ALLOW_SIGNUPS = False
ACCOUNT_ADAPTER = "portal.auth.NoSignupAccountAdapter"
LOGIN_REDIRECT_URL = "/"
LOGIN_URL = "/accounts/login/"
ACCOUNT_LOGOUT_REDIRECT_URL = "/accounts/login/"
# Two-factor authentication (allauth.mfa): an authenticator app (TOTP) with recovery codes; no WebAuthn/passkeys.
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes"]
MFA_TOTP_ISSUER = AIRLOCK_PRODUCT
MFA_PASSKEY_LOGIN_ENABLED = False


def oidc_provider_settings(
    *,
    server_url: str,
    client_id: str,
    client_secret: str,
    provider_id: str = "sso",
    name: str = "Single sign-on",
    token_auth_method: str = "",
) -> dict:
    """allauth's SOCIALACCOUNT_PROVIDERS for one OpenID Connect identity provider (authorization code + PKCE).

    The IdP must allow the redirect URI <portal>/accounts/oidc/<provider_id>/login/callback/.
    """
    app_settings: dict = {"server_url": server_url, "oauth_pkce_enabled": True}
    if token_auth_method:
        if token_auth_method not in ("client_secret_basic", "client_secret_post"):
            raise ImproperlyConfigured(
                f"AIRLOCK_OIDC_TOKEN_AUTH_METHOD={token_auth_method!r}: use client_secret_basic or client_secret_post."
            )
        app_settings["token_auth_method"] = token_auth_method
    app = {"provider_id": provider_id, "name": name, "client_id": client_id, "secret": client_secret}
    return {"openid_connect": {"OAUTH_PKCE_ENABLED": True, "APPS": [{**app, "settings": app_settings}]}}


# Single sign-on (OpenID Connect), on when AIRLOCK_OIDC_SERVER_URL is set (the issuer URL, or its
# /.well-known/openid-configuration). The client secret goes to allauth only: it is never logged or audited.
# Accounts are still created by an operator: an SSO identity signs in to the local account it is linked to (the
# user links it under "Account security", or an admin adds the social account). With
# AIRLOCK_OIDC_EMAIL_AUTHENTICATION on, an identity whose e-mail the IdP marks verified signs in to (and is linked
# to) the local account with that e-mail; allauth then makes an unverified local account's password unusable.
OIDC_SERVER_URL = env_str("AIRLOCK_OIDC_SERVER_URL", "")
if OIDC_SERVER_URL:
    SOCIALACCOUNT_PROVIDERS = oidc_provider_settings(
        server_url=OIDC_SERVER_URL,
        client_id=env_str("AIRLOCK_OIDC_CLIENT_ID", required=True),
        client_secret=env_str("AIRLOCK_OIDC_CLIENT_SECRET", required=True),
        provider_id=env_str("AIRLOCK_OIDC_PROVIDER_ID", "sso"),
        name=env_str("AIRLOCK_OIDC_PROVIDER_NAME", "Single sign-on"),
        token_auth_method=env_str("AIRLOCK_OIDC_TOKEN_AUTH_METHOD", ""),
    )
else:
    SOCIALACCOUNT_PROVIDERS = {}
SOCIALACCOUNT_EMAIL_AUTHENTICATION = env_bool("AIRLOCK_OIDC_EMAIL_AUTHENTICATION", False)
SOCIALACCOUNT_EMAIL_AUTHENTICATION_AUTO_CONNECT = SOCIALACCOUNT_EMAIL_AUTHENTICATION
SOCIALACCOUNT_STORE_TOKENS = False
# Linking or unlinking an SSO identity asks for the password again (a stolen session cannot add a way in).
SOCIALACCOUNT_REAUTHENTICATION_REQUIRED = True
SOCIALACCOUNT_REQUESTS_TIMEOUT = env_int("AIRLOCK_OIDC_TIMEOUT_SECONDS", 10)
# Audits SSO failures (allauth reports them to the adapter, not through a signal); sign-up stays closed.
SOCIALACCOUNT_ADAPTER = "audit.auth_events.AuditedSocialAccountAdapter"
SESSION_COOKIE_NAME = env_str("AIRLOCK_SESSION_COOKIE_NAME", "airlock_sessionid")
CSRF_COOKIE_NAME = env_str("AIRLOCK_CSRF_COOKIE_NAME", "airlock_csrftoken")
EMAIL_BACKEND = env_str("AIRLOCK_EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("AIRLOCK_STATIC_ROOT", str(BASE_DIR / "staticfiles")))
STATICFILES_DIRS = [BASE_DIR / "portal" / "static"]
# Serve /static/ from the ASGI app itself (embedded default); behind a proxy, turn off and collectstatic.
SERVE_STATIC = env_bool("AIRLOCK_SERVE_STATIC", True)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "portal.api.exception_handler",
    "DEFAULT_PARSER_CLASSES": [
        "portal.api_inputs.StrictJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "portal.api_inputs.BoundedLimitOffsetPagination",
    "PAGE_SIZE": 50,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Airlock API",
    "VERSION": AIRLOCK_VERSION,
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema maps every endpoint: signed-in users only, like the API itself.
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
}

GUARDIAN_RAISE_403 = False
ANONYMOUS_USER_NAME = None

# Secrets: AIRLOCK_ENCRYPTION_KEYS is a comma-separated list of Fernet keys; the first encrypts, all decrypt.
AIRLOCK_ENCRYPTION_KEYS = env_list("AIRLOCK_ENCRYPTION_KEYS")
# Ed25519 key (url-safe base64 of the 32-byte seed) that signs audit checkpoints and export manifests.
AIRLOCK_AUDIT_SIGNING_KEY = env_str("AIRLOCK_AUDIT_SIGNING_KEY", "")
# How record() chains events: "immediate" (the caller's transaction locks the organization's chain head and
# appends; the event has its sequence when record() returns) or "batched" (record() writes a pending row, and a
# chainer moves committed rows into the chain in batches after commit; see audit/chaining.py).
AUDIT_CHAINING = env_str("AIRLOCK_AUDIT_CHAINING", "immediate")
if AUDIT_CHAINING not in ("immediate", "batched"):
    raise ImproperlyConfigured(f"AIRLOCK_AUDIT_CHAINING={AUDIT_CHAINING!r}: use 'immediate' or 'batched'.")
# Batched mode: how long a woken chainer lets a burst of events gather before it chains them in one commit.
AUDIT_CHAINER_DEBOUNCE_SECONDS = env_float("AIRLOCK_AUDIT_CHAINER_DEBOUNCE_SECONDS", 0.05)
# Batched mode: "thread" (a chainer thread in each writing process) or "process" (run `manage.py audit chainer`).
AUDIT_CHAINER = env_str("AIRLOCK_AUDIT_CHAINER", "thread")
if AUDIT_CHAINER not in ("thread", "process"):
    raise ImproperlyConfigured(f"AIRLOCK_AUDIT_CHAINER={AUDIT_CHAINER!r}: use 'thread' or 'process'.")
# verify_chain reports pending (batched, not yet chained) events older than this as a problem.
AUDIT_PENDING_STALE_SECONDS = env_int("AIRLOCK_AUDIT_PENDING_STALE_SECONDS", 60)
# Matching time an event's redaction patterns share; past it, the event's text is masked whole.
AUDIT_REDACTION_TIMEOUT_SECONDS = env_float("AIRLOCK_AUDIT_REDACTION_TIMEOUT_SECONDS", 0.05)
AUDIT_EXPORT_DIR = Path(env_str("AIRLOCK_AUDIT_EXPORT_DIR", str(DATA_DIR / "exports")))
# Networks SIEM destinations may not connect to, besides link-local and cloud metadata addresses (always refused).
AUDIT_DESTINATION_BLOCKED_NETWORKS = env_networks("AIRLOCK_AUDIT_DESTINATION_BLOCKED_NETWORKS")

# Workspaces: where the local backend puts each session's directory, and the limits of one command.
WORKSPACES_ROOT = Path(env_str("AIRLOCK_WORKSPACES_ROOT", str(DATA_DIR / "workspaces")))
# Backend of a workspace started without a template (an organization that never had one): "bubblewrap" or
# "local" (not a sandbox: commands run as Airlock's own user on this host).
WORKSPACE_DEFAULT_BACKEND = env_str("AIRLOCK_WORKSPACE_DEFAULT_BACKEND", "bubblewrap")
# Backends an organization's owners and template admins may give a template: choosing "local" (no sandbox) is the
# operator's decision, not an organization's.
WORKSPACE_BACKENDS = env_list("AIRLOCK_WORKSPACE_BACKENDS", ["bubblewrap"])
for _backend in (WORKSPACE_DEFAULT_BACKEND, *WORKSPACE_BACKENDS):
    if _backend not in ("local", "bubblewrap"):
        raise ImproperlyConfigured(
            f"AIRLOCK_WORKSPACE_DEFAULT_BACKEND / AIRLOCK_WORKSPACE_BACKENDS name {_backend!r}: "
            "use 'local' or 'bubblewrap'."
        )
# When Airlock runs as root, an organization's sandboxes run as the unprivileged host user (and group)
# SANDBOX_UID_BASE + the organization's id: a root-started sandbox would be host root to the kernel (e.g. for
# /proc/sys), and one uid per tenant keeps tenants' files, keyrings and per-user kernel limits apart. The default
# lies above the ranges Debian, systemd and container tools hand out; keep that range free of real users.
SANDBOX_UID_BASE = env_int("AIRLOCK_SANDBOX_UID_BASE", 2_000_000_000)
if not 100_000 <= SANDBOX_UID_BASE <= 4_000_000_000:
    raise ImproperlyConfigured(
        f"AIRLOCK_SANDBOX_UID_BASE={SANDBOX_UID_BASE}: use a range no account uses (100,000 to 4,000,000,000)."
    )
# When Airlock runs as root: how many processes (threads count) an organization's sandboxes may have at once, all
# its workspaces together (RLIMIT_NPROC of its host user), so that no tenant's fork bomb takes the host's.
SANDBOX_MAX_PROCESSES = env_int("AIRLOCK_SANDBOX_MAX_PROCESSES", 1024)
if SANDBOX_MAX_PROCESSES < 16:
    raise ImproperlyConfigured(f"AIRLOCK_SANDBOX_MAX_PROCESSES={SANDBOX_MAX_PROCESSES}: allow at least 16.")
# A workspace with no command for this many days is stopped, and a stopped one's files are deleted after as many
# more (daily, `workspaces.prune`); 0 keeps every workspace and its files.
WORKSPACE_IDLE_DAYS = env_int("AIRLOCK_WORKSPACE_IDLE_DAYS", 0)
if not 0 <= WORKSPACE_IDLE_DAYS <= 36_500:
    raise ImproperlyConfigured(
        f"AIRLOCK_WORKSPACE_IDLE_DAYS={WORKSPACE_IDLE_DAYS}: use 0 (never) or a number of days up to 36500."
    )
WORKSPACE_COMMAND_TIMEOUT_SECONDS = env_int("AIRLOCK_COMMAND_TIMEOUT_SECONDS", 120)
WORKSPACE_OUTPUT_CAP_BYTES = env_int("AIRLOCK_COMMAND_OUTPUT_CAP_BYTES", 256 * 1024)

# Model calls: per-request timeout, and Airlock's own bounded retries on 429/5xx/connection errors
# (exponential backoff with full jitter, honouring Retry-After; the SDKs run with max_retries=0).
PROVIDER_TIMEOUT_SECONDS = env_int("AIRLOCK_PROVIDER_TIMEOUT_SECONDS", 120)
PROVIDER_MAX_RETRIES = env_int("AIRLOCK_PROVIDER_MAX_RETRIES", 2)
PROVIDER_RETRY_BASE_SECONDS = env_float("AIRLOCK_PROVIDER_RETRY_BASE_SECONDS", 0.5)
PROVIDER_RETRY_MAX_SECONDS = env_float("AIRLOCK_PROVIDER_RETRY_MAX_SECONDS", 20)

# Agent loop limits.
AGENT_MAX_STEPS = env_int("AIRLOCK_AGENT_MAX_STEPS", 25)
AGENT_DELTA_FLUSH_MS = env_int("AIRLOCK_AGENT_DELTA_FLUSH_MS", 40)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("AIRLOCK_LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
    },
}
