"""`audit keygen [--public]`: a new Ed25519 signing key for checkpoints and export manifests, or the public key."""

from __future__ import annotations

import argparse
import base64
import hashlib
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from audit import signing

HELP = (
    "Print a new audit signing key (set it as AIRLOCK_AUDIT_SIGNING_KEY) and its public key PEM; "
    "with --public, print only the public key of the configured key."
)


def register(parser: argparse.ArgumentParser) -> None:
    """Arguments of `audit keygen`."""
    parser.add_argument(
        "--public", action="store_true", help="print the configured key's public PEM and key id (no secret)"
    )


def _public(private: Ed25519PrivateKey) -> tuple[str, str]:
    """The public key PEM and its key id (as `audit.signing.key_id` names it)."""
    public = private.public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return pem, hashlib.sha256(raw).hexdigest()[:32]


def handle(command: BaseCommand, options: dict[str, Any]) -> None:
    """Print a new key with its public half, or the configured key's public half."""
    if options.get("public"):
        try:
            command.stdout.write(f"key id: {signing.key_id()}")
            command.stdout.write(signing.public_key_pem().rstrip("\n"))
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        return
    key = signing.generate_key()
    pem, key_id = _public(Ed25519PrivateKey.from_private_bytes(base64.urlsafe_b64decode(key)))
    command.stdout.write("# Keep the key secret; give the public key to your auditors.")
    command.stdout.write(f"AIRLOCK_AUDIT_SIGNING_KEY={key}")
    command.stdout.write(f"# key id: {key_id}")
    command.stdout.write(pem.rstrip("\n"))
