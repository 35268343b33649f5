"""Ed25519 signatures over audit checkpoints and export manifests (key from AIRLOCK_AUDIT_SIGNING_KEY)."""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def generate_key() -> str:
    """A new signing key, as the url-safe base64 of the 32-byte Ed25519 seed (the form the setting takes)."""
    seed = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.urlsafe_b64encode(seed).decode()


@lru_cache(maxsize=2)
def _private_key(encoded: str) -> Ed25519PrivateKey:
    try:
        seed = base64.urlsafe_b64decode(encoded.encode())
        return Ed25519PrivateKey.from_private_bytes(seed)
    except ValueError as exc:
        raise ImproperlyConfigured(
            "AIRLOCK_AUDIT_SIGNING_KEY is not an Ed25519 key: use the url-safe base64 of a 32-byte seed "
            "(python manage.py audit keygen prints one)."
        ) from exc


def private_key() -> Ed25519PrivateKey:
    """The configured signing key."""
    if not settings.AIRLOCK_AUDIT_SIGNING_KEY:
        raise ImproperlyConfigured("Set AIRLOCK_AUDIT_SIGNING_KEY: audit checkpoints and exports are signed with it.")
    return _private_key(settings.AIRLOCK_AUDIT_SIGNING_KEY)


def public_key_pem() -> str:
    """The public half, PEM, for auditors to verify signatures outside Airlock."""
    return (
        private_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def key_id() -> str:
    """A short, stable name of the public key: the first 16 bytes of its sha256, hex."""
    raw = private_key().public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:32]


def sign(message: bytes) -> str:
    """Sign bytes; the signature as hex."""
    return private_key().sign(message).hex()


def verify(message: bytes, signature_hex: str, public_pem: str | None = None) -> bool:
    """Whether a hex signature over the message is valid (for the configured key, or a given public PEM)."""
    public: Ed25519PublicKey
    if public_pem is None:
        public = private_key().public_key()
    else:
        loaded = serialization.load_pem_public_key(public_pem.encode())
        if not isinstance(loaded, Ed25519PublicKey):
            return False
        public = loaded
    try:
        public.verify(bytes.fromhex(signature_hex), message)
    except (InvalidSignature, ValueError):
        return False
    return True
