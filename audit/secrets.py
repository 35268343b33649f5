"""Secrets found by pattern (provider keys, tokens, private keys, cloud credentials, passwords) and their masking.

Every audit event goes through `mask_secrets` before it is written, whatever the organization's content
policy: a secret becomes `[REDACTED:<kind>]`, followed by at most its last four characters (`…wxyz`) when
it is long enough that four characters give nothing away. Patterns are compiled once, at import.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Secrets shorter than this are masked without any trailing characters.
HINT_MIN_LENGTH = 20
HINT_CHARS = 4
# No secret we look for fits in a string shorter than this ("pwd=abcd" is 8).
MIN_SCANNED_LENGTH = 8
_NOT_MASKED_YET = r"(?!\[REDACTED)"

# Keys of a mapping whose string value is a secret whatever it looks like.
SECRET_KEYS = frozenset(
    {
        "password",
        "passwd",
        "passphrase",
        "secret",
        "client_secret",
        "api_key",
        "apikey",
        "access_token",
        "refresh_token",
        "auth_token",
        "authorization",
        "private_key",
        "secret_access_key",
        "aws_secret_access_key",
    }
)


@dataclass(frozen=True)
class SecretPattern:
    """One kind of secret: a regular expression whose group `secret` (or whole match) is masked."""

    kind: str
    regex: re.Pattern[str]
    triggers: tuple[str, ...]
    keep_hint: bool = True


def _pattern(kind: str, expression: str, *, triggers: tuple[str, ...], keep_hint: bool = True) -> SecretPattern:
    """A pattern that only runs on text containing one of its triggers (lower-case triggers: any case)."""
    return SecretPattern(kind=kind, regex=re.compile(expression), triggers=triggers, keep_hint=keep_hint)


# Order matters: the most specific first (an Anthropic key also looks like an OpenAI one, a bearer token
# may be a JWT); later patterns never match inside an earlier mask.
SECRET_PATTERNS: tuple[SecretPattern, ...] = (
    _pattern(
        "private_key",
        r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----[\s\S]*?(?:-----END[A-Z0-9 ]*PRIVATE KEY-----|\Z)",
        triggers=("PRIVATE KEY-----",),
        keep_hint=False,
    ),
    # The tail of a key whose beginning was cut off (the last 4 KiB of a command's output).
    _pattern(
        "private_key",
        r"[A-Za-z0-9+/=\r\n]{16,}-----END[A-Z0-9 ]*PRIVATE KEY-----",
        triggers=("PRIVATE KEY-----",),
        keep_hint=False,
    ),
    _pattern("anthropic_key", r"\bsk-ant-[A-Za-z0-9_\-]{16,}", triggers=("sk-ant-",)),
    _pattern("openai_key", r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}", triggers=("sk-",)),
    _pattern("google_api_key", r"\bAIza[0-9A-Za-z_\-]{30,}", triggers=("AIza",)),
    _pattern(
        "aws_access_key_id",
        r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b",
        triggers=("AKIA", "ASIA", "AGPA", "AIDA", "AROA"),
    ),
    _pattern(
        "aws_secret_access_key",
        r"(?i:aws_secret_access_key|aws_secret_key|secret_access_key|aws_secret)[\"']?\s*[=:]\s*[\"']?"
        + _NOT_MASKED_YET
        + r"(?P<secret>[A-Za-z0-9/+=]{30,})",
        triggers=("secret",),
    ),
    _pattern(
        "github_token",
        r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,})",
        triggers=("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    ),
    _pattern("slack_token", r"\bxox[abposr]-[A-Za-z0-9\-]{10,}", triggers=("xox",)),
    _pattern("jwt", r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}", triggers=("eyJ",)),
    _pattern(
        "bearer_token",
        r"(?i:\bbearer)\s+" + _NOT_MASKED_YET + r"(?P<secret>[A-Za-z0-9\-._~+/]{8,}=*)",
        triggers=("bearer",),
    ),
    # user:password@host in a URL
    _pattern(
        "password",
        r"(?i:[a-z][a-z0-9+.\-]*)://[^\s:/@]+:" + _NOT_MASKED_YET + r"(?P<secret>[^\s@/]+)@",
        triggers=("://",),
        keep_hint=False,
    ),
    # password=..., "password": "...", PASSWORD: ... (also passwd, pwd, passphrase)
    _pattern(
        "password",
        r"(?i:(?:password|passwd|passphrase|\bpwd))[\"']?\s*[=:]\s*[\"']?"
        + _NOT_MASKED_YET
        + r"(?P<secret>[^\s\"'&;,]+)",
        triggers=("password", "passwd", "passphrase", "pwd"),
        keep_hint=False,
    ),
)


def without_secrets(text: str, *secrets: str, mask_text: str = "****") -> str:
    """The text with every known secret (a key, a token, a client secret; four characters or more) replaced."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, mask_text)
    return text


def mask(secret: str, kind: str, *, keep_hint: bool = True) -> str:
    """The mask that replaces a secret: `[REDACTED:<kind>]`, then at most its last four characters."""
    if keep_hint and len(secret) >= HINT_MIN_LENGTH:
        return f"[REDACTED:{kind}]…{secret[-HINT_CHARS:]}"
    return f"[REDACTED:{kind}]"


def _replacer(pattern: SecretPattern) -> Callable[[re.Match[str]], str]:
    has_group = "secret" in pattern.regex.groupindex

    def replace(match: re.Match[str]) -> str:
        if not has_group:
            return mask(match.group(0), pattern.kind, keep_hint=pattern.keep_hint)
        start, end = match.span("secret")
        whole_start = match.start()
        text = match.group(0)
        return (
            text[: start - whole_start]
            + mask(match.group("secret"), pattern.kind, keep_hint=pattern.keep_hint)
            + text[end - whole_start :]
        )

    return replace


_REPLACERS = tuple((pattern.regex, _replacer(pattern)) for pattern in SECRET_PATTERNS)
# (trigger, pattern index): lower-case triggers are looked for in the lower-cased text, the others as written.
_EXACT_TRIGGERS = tuple(
    (trigger, index)
    for index, pattern in enumerate(SECRET_PATTERNS)
    for trigger in pattern.triggers
    if trigger != trigger.lower()
)
_ANY_CASE_TRIGGERS = tuple(
    (trigger, index)
    for index, pattern in enumerate(SECRET_PATTERNS)
    for trigger in pattern.triggers
    if trigger == trigger.lower()
)


def mask_secrets_in_text(text: str) -> str:
    """The text with every secret found by pattern masked (a pattern runs only if one of its triggers occurs)."""
    if len(text) < MIN_SCANNED_LENGTH:
        return text
    lowered = text.lower()
    hits = {index for trigger, index in _EXACT_TRIGGERS if trigger in text}
    hits.update(index for trigger, index in _ANY_CASE_TRIGGERS if trigger in lowered)
    for index in sorted(hits):
        if index > 0 and not _still_triggered(text, index):
            continue  # an earlier mask took the trigger away (a private key's END line, say)
        regex, replace = _REPLACERS[index]
        text = regex.sub(replace, text)
    return text


def _still_triggered(text: str, index: int) -> bool:
    triggers = SECRET_PATTERNS[index].triggers
    lowered = text.lower() if any(trigger == trigger.lower() for trigger in triggers) else text
    return any(trigger in (lowered if trigger == trigger.lower() else text) for trigger in triggers)


def mask_secrets(value: Any, *, key: str | None = None) -> Any:
    """A copy of a JSON-like value with secrets masked in every string (and every value under a secret's key)."""
    if isinstance(value, str):
        if key is not None and key.lower() in SECRET_KEYS and value and not value.startswith("[REDACTED"):
            return mask(value, "secret", keep_hint=key.lower() not in {"password", "passwd", "passphrase"})
        return mask_secrets_in_text(value)
    if isinstance(value, dict):
        return {name: mask_secrets(item, key=name if isinstance(name, str) else None) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [mask_secrets(item) for item in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    # Anything else (bytes, a set, an exception, a datetime) is stored as its text: mask that text.
    return mask_secrets(str(value), key=key)


def _screening_words() -> tuple[str, ...]:
    """What `may_hold_secrets` looks for in lower-cased JSON text: every trigger, lower-cased, and every secret
    key's name in quotes; a word that contains another one is left out (the shorter one already finds it)."""
    words = {trigger.lower() for pattern in SECRET_PATTERNS for trigger in pattern.triggers}
    words |= {f'"{name}"' for name in SECRET_KEYS}
    return tuple(sorted(word for word in words if not any(other != word and other in word for other in words)))


_SCREENING_WORDS = _screening_words()


def may_hold_secrets(json_text: str) -> bool:
    """Whether a value's JSON text could hold anything `mask_secrets` masks (False: nothing to mask).

    Conservative: True when any secret pattern's trigger occurs anywhere in the text, in any case (values and
    keys alike; no trigger holds a character JSON escapes), or a secret key's name occurs in quotes.
    """
    lowered = json_text.lower()
    for word in _SCREENING_WORDS:  # a plain loop: this runs for every event written
        if word in lowered:
            return True
    return False
