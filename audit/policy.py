"""What an event may contain: the organization's content policy, and secrets masked before anything is written.

- `full` (default, also when the organization has no AuditSettings row): everything, secrets masked.
- `redacted`: secrets masked, then every match of the organization's `redaction_patterns` too.
- `digest`: secrets masked, and the content-bearing fields of an action (`CONTENT_FIELDS`) replaced by
  `{"sha256": ..., "length": ...}` of the original text.

`prepare_event_data` runs inside `audit.record()` for every event, so an organization's policy is read
once and cached in the process for `AUDIT_POLICY_CACHE_SECONDS` (default 5); patterns are compiled once
per load. `audit_settings_update` drops the cached entry when it changes the policy; other processes pick
the change up within the cache time.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import regex
from django.conf import settings

from audit.chain import canonical_json, normalize, storable_json
from audit.models import AuditSettings, ContentPolicy
from audit.secrets import mask_secrets, mask_secrets_in_text, may_hold_secrets

logger = logging.getLogger(__name__)

DEFAULT_CACHE_SECONDS = 5.0
MAX_PATTERNS = 50
MAX_PATTERN_LENGTH = 500
PATTERN_MASK = "[REDACTED:pattern]"
PATTERN_TIMEOUT_MASK = "[REDACTED:pattern-unavailable]"  # timed out, or could not be compiled
# Matching time one event's redaction patterns may take (AUDIT_REDACTION_TIMEOUT_SECONDS).
DEFAULT_PATTERN_TIMEOUT = 0.05

# The fields of each action's data that carry content (what people typed, what the model or a command
# printed). Under the `digest` policy only their sha256 and length are kept. Commands and tool arguments
# stay in clear: they are what the agent did, which is the point of the log (their secrets are masked).
CONTENT_FIELDS: dict[str, tuple[str, ...]] = {
    "prompt.submitted": ("text",),
    "session.created": ("title",),
    "model.call": ("response_text", "request_messages"),
    "workspace.command": ("output_head", "output_tail"),
    "tool.result": ("output", "content"),
}


@dataclass(frozen=True)
class CompiledPolicy:
    """An organization's content policy, ready to apply: the policy name and its compiled patterns."""

    content_policy: str
    patterns: tuple[Any, ...] = ()  # compiled `regex` patterns
    # A stored pattern could not be compiled: text is masked whole rather than written unredacted.
    fail_closed: bool = False

    @property
    def redacts(self) -> bool:
        """Whether text goes through the patterns (or is masked whole for want of them)."""
        return bool(self.patterns) or self.fail_closed


DEFAULT_POLICY = CompiledPolicy(content_policy=ContentPolicy.FULL)

_cache: dict[int, tuple[float, CompiledPolicy]] = {}
_cache_lock = threading.Lock()


def compile_redaction_pattern(pattern: str) -> Any:
    """A redaction pattern compiled (Python `re` syntax, by the `regex` module); ValueError saying what is wrong.

    `regex` matches with a timeout (`_apply_patterns`), so no pattern, however written, can stall the writer of
    an event: Python's `re` can backtrack for hours on `(a+)+$`.
    """
    try:
        compiled = regex.compile(pattern, flags=regex.VERSION0)
    except (regex.error, OverflowError, RecursionError, TypeError, ValueError) as exc:
        raise ValueError(f"{pattern!r} is not a valid regular expression ({exc})") from None
    if compiled.match(""):
        raise ValueError(f"{pattern!r} matches empty text, so it would mask nothing")
    return compiled


def validate_redaction_patterns(patterns: object) -> list[str]:
    """The patterns if they are a list of valid regular expressions; else ValueError saying which one is wrong."""
    if not isinstance(patterns, list | tuple):
        raise ValueError("redaction_patterns must be a list of regular expressions.")
    if len(patterns) > MAX_PATTERNS:
        raise ValueError(f"At most {MAX_PATTERNS} redaction patterns are allowed, got {len(patterns)}.")
    cleaned = []
    for index, pattern in enumerate(patterns):
        if not isinstance(pattern, str) or not pattern.strip():
            raise ValueError(f"Redaction pattern #{index + 1} must be a non-empty regular expression.")
        if len(pattern) > MAX_PATTERN_LENGTH:
            raise ValueError(f"Redaction pattern #{index + 1} is longer than {MAX_PATTERN_LENGTH} characters.")
        try:
            compile_redaction_pattern(pattern)
        except ValueError as exc:
            raise ValueError(f"Redaction pattern #{index + 1}: {exc}.") from None
        cleaned.append(pattern)
    return cleaned


def _compile(content_policy: str, patterns: object) -> CompiledPolicy:
    compiled, fail_closed = [], False
    if content_policy == ContentPolicy.REDACTED and patterns and not isinstance(patterns, list):
        logger.error("Audit redaction patterns stored as %s, not a list: event text is masked whole", type(patterns))
        fail_closed = True
    if content_policy == ContentPolicy.REDACTED and isinstance(patterns, list):
        for pattern in patterns:
            try:
                compiled.append(compile_redaction_pattern(str(pattern)))
            except ValueError:
                # Saved around the service (which refuses it): what it was to mask must not go out in clear.
                logger.error(
                    "Invalid audit redaction pattern %r: the organization's event text is masked whole", pattern
                )
                fail_closed = True
    if content_policy not in ContentPolicy.values:
        logger.error("Unknown audit content policy %r; keeping full content", content_policy)
        content_policy = ContentPolicy.FULL
    return CompiledPolicy(content_policy=content_policy, patterns=tuple(compiled), fail_closed=fail_closed)


def _cache_seconds() -> float:
    return float(getattr(settings, "AUDIT_POLICY_CACHE_SECONDS", DEFAULT_CACHE_SECONDS))


def policy_for(organization_id: int) -> CompiledPolicy:
    """The organization's compiled policy, from the process cache when fresh, else from the database."""
    now = time.monotonic()
    cached = _cache.get(organization_id)
    if cached is not None and cached[0] > now:
        return cached[1]
    row = (
        AuditSettings.objects.filter(organization_id=organization_id)
        .values_list("content_policy", "redaction_patterns")
        .first()
    )
    policy = DEFAULT_POLICY if row is None else _compile(row[0], row[1])
    ttl = _cache_seconds()
    if ttl > 0:
        with _cache_lock:
            _cache[organization_id] = (now + ttl, policy)
    return policy


def invalidate_policy(organization_id: int | None = None) -> None:
    """Forget the cached policy of one organization (or of all) in this process."""
    with _cache_lock:
        if organization_id is None:
            _cache.clear()
        else:
            _cache.pop(organization_id, None)


def digest(value: Any) -> dict[str, Any]:
    """`{"sha256": ..., "length": ...}` of a text (UTF-8), or of a non-text value's canonical JSON."""
    text = value if isinstance(value, str) else canonical_json(value)
    return {"sha256": hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(), "length": len(text)}


class _PatternBudget:
    """The matching time one event's patterns share (`AUDIT_REDACTION_TIMEOUT_SECONDS`, 50 ms); once it is
    spent, the rest of the event's text is masked whole (fail closed: text an owner asked to redact never goes
    out unmasked)."""

    def __init__(self, *, exhausted: bool = False) -> None:
        self.exhausted = exhausted
        self.deadline = time.monotonic() + _pattern_timeout()

    def sub(self, pattern: Any, text: str) -> str:
        """`text` with the pattern's matches masked, or wholly masked when the time is up."""
        left = self.deadline - time.monotonic()
        if self.exhausted or left <= 0:
            return self._spent()
        try:
            return pattern.sub(PATTERN_MASK, text, timeout=left)
        except TimeoutError:
            return self._spent()

    def _spent(self) -> str:
        if not self.exhausted:
            self.exhausted = True
            logger.warning("The audit redaction patterns ran out of time; the event's remaining text is masked whole")
        return PATTERN_TIMEOUT_MASK


def _pattern_timeout() -> float:
    return float(getattr(settings, "AUDIT_REDACTION_TIMEOUT_SECONDS", DEFAULT_PATTERN_TIMEOUT))


def _apply_patterns(value: Any, patterns: tuple[Any, ...], budget: _PatternBudget | None = None) -> Any:
    budget = budget or _PatternBudget()
    if isinstance(value, str):
        if budget.exhausted:
            return PATTERN_TIMEOUT_MASK
        value = str(value)  # a plain str, not a subclass such as a choices member
        for pattern in patterns:
            value = budget.sub(pattern, value)
        return value
    if isinstance(value, dict):
        # Keys carry content too (a tool call's arguments are named by the model): they are masked like values,
        # a suffix keeping apart two that mask alike.
        masked: dict[Any, Any] = {}
        for key, item in value.items():
            name = _apply_patterns(key, patterns, budget) if isinstance(key, str) else key
            while name in masked:
                name = f"{name}#"
            masked[name] = _apply_patterns(item, patterns, budget)
        return masked
    if isinstance(value, list):
        return [_apply_patterns(item, patterns, budget) for item in value]
    return value


def prepare_event_data(*, organization_id: int, action: str, data: dict[str, Any]) -> dict[str, Any]:
    """The data to store for an event under the organization's content policy (secrets always masked)."""
    policy = policy_for(organization_id)
    if policy.content_policy == ContentPolicy.DIGEST:
        fields = CONTENT_FIELDS.get(action, ())
        if fields and any(data.get(name) is not None for name in fields):
            data = {key: digest(value) if key in fields and value is not None else value for key, value in data.items()}
    prepared = mask_secrets(data)
    if policy.redacts:
        prepared = _apply_patterns(prepared, policy.patterns, _PatternBudget(exhausted=policy.fail_closed))
    return prepared


def prepare_event_json(*, organization_id: int, action: str, data: dict[str, Any]) -> tuple[Any, str]:
    """(value, JSON text) of an event's data to store, for a writer that sends JSON text to PostgreSQL.

    Most events need no masking: under the `full` policy, data whose canonical JSON PostgreSQL stores as is
    (`storable_json`) and that holds none of the secret patterns' triggers nor a secret key's name
    (`may_hold_secrets`, a conservative test over the whole text) is stored as that text, in one pass. Else it
    is `prepare_event_data` then `normalize`, as for every other writer; the database keeps the same value.
    On the one-pass path the value returned is the caller's own `data` (not a normalized copy): only the text
    is stored and hashed.
    """
    if policy_for(organization_id).content_policy == ContentPolicy.FULL:
        text = storable_json(data)
        if text is not None and not may_hold_secrets(text):
            return data, text
    prepared = normalize(prepare_event_data(organization_id=organization_id, action=action, data=data))
    return prepared, canonical_json(prepared)


def prepare_event_text(*, organization_id: int, text: str) -> str:
    """A free-text column of an event (error, target display) with secrets and the org's patterns masked."""
    if not text:
        return text
    text = mask_secrets_in_text(text)
    policy = policy_for(organization_id)
    if policy.redacts:
        text = _apply_patterns(text, policy.patterns, _PatternBudget(exhausted=policy.fail_closed))
    return text
