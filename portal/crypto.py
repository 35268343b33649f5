"""Secrets at rest: MultiFernet over AIRLOCK_ENCRYPTION_KEYS (the first key encrypts, all decrypt)."""

from __future__ import annotations

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise ImproperlyConfigured("Set AIRLOCK_ENCRYPTION_KEYS: no key is configured to encrypt secrets.")
    try:
        return MultiFernet([Fernet(key.encode()) for key in keys])
    except ValueError as exc:
        raise ImproperlyConfigured(
            "AIRLOCK_ENCRYPTION_KEYS holds a value that is not a Fernet key (32 url-safe base64 bytes)."
        ) from exc


def fernet() -> MultiFernet:
    """The MultiFernet for the configured keys."""
    return _fernet(tuple(settings.AIRLOCK_ENCRYPTION_KEYS))


def encrypt_secret(plaintext: str) -> str:
    """Encrypt a secret under the first key."""
    return fernet().encrypt(plaintext.encode()).decode()


def decrypt_secret(token: str) -> str:
    """Decrypt a secret with any configured key."""
    try:
        return fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise ImproperlyConfigured(
            "A stored secret cannot be decrypted with any key in AIRLOCK_ENCRYPTION_KEYS: was a key removed?"
        ) from exc


def rotate_secret(token: str) -> str:
    """Re-encrypt a stored secret under the first key."""
    return fernet().rotate(token.encode()).decode()


def secret_hint(plaintext: str) -> str:
    """What may be shown of a secret: its last four characters at most."""
    return plaintext[-4:] if len(plaintext) >= 12 else ""


def masked_secret(plaintext: str) -> str:
    """How a secret may appear in audit rows and pages: "****" and at most its last four characters."""
    return "****" + secret_hint(plaintext)
