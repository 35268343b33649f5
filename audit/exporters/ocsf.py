"""OCSF 1.x JSON Lines: Authentication (3002) for `auth.*` actions, API Activity (6003) for everything else.

`type_uid = class_uid * 100 + activity_id`; `time` is epoch milliseconds; status is Success (1) or Failure (2),
a denied action being a Failure whose `status_detail` says so. Fields OCSF has no place for (the chain links,
correlation ids, the event's `data`) go under `unmapped`.

`model.call` events also carry the AI operation profile (`metadata.profiles = ["ai_operation"]`). Its
attribute names follow the OCSF schema's `ai_operation` profile, `ai_model` and `message_context` objects
as published for OCSF 1.8.0-dev (docs.tenzir.com/reference/ocsf/1-8-0-dev/profiles/ai_operation and
.../objects/ai_model, .../objects/message_context; the same names in the `ocsf-types` crate's generated
`MessageContext`): `ai_model {ai_provider, name, uid, version}` and `message_context {uid, name, ai_role,
ai_role_id, prompt_tokens, completion_tokens, total_tokens}`.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from django.conf import settings

from audit.chain import format_time

EXTENSION = "ocsf.jsonl"
CONTENT_TYPE = "application/x-ndjson; charset=utf-8"
SCHEMA_VERSION = "1.3.0"

AUTHENTICATION = (3002, "Authentication", 3, "Identity & Access Management")
API_ACTIVITY = (6003, "API Activity", 6, "Application Activity")

# Authentication activities: 1 Logon, 2 Logoff, 99 Other.
_AUTH_ACTIVITIES = {"login": (1, "Logon"), "login_failed": (1, "Logon"), "sso": (1, "Logon"), "logout": (2, "Logoff")}
# API Activity activities by the verb an action ends with: 1 Create, 2 Read, 3 Update, 4 Delete, 99 Other.
_API_ACTIVITIES = {
    "created": (1, "Create"),
    "submitted": (1, "Create"),
    "requested": (1, "Create"),
    "started": (1, "Create"),
    "exported": (2, "Read"),
    "viewed": (2, "Read"),
    "read": (2, "Read"),
    "updated": (3, "Update"),
    "changed": (3, "Update"),
    "granted": (3, "Update"),
    "revoked": (3, "Update"),
    "rotated": (3, "Update"),
    "deleted": (4, "Delete"),
    "purged": (4, "Delete"),
    "removed": (4, "Delete"),
}
_OTHER = (99, "Other")
# OCSF severity_id: 1 Informational, 2 Low, 3 Medium.
_SEVERITY = {"success": (1, "Informational"), "failure": (2, "Low"), "denied": (3, "Medium")}
# OCSF user type_id: 1 User, 3 System, 99 Other.
_USER_TYPES = {"user": (1, "User"), "system": (3, "System"), "agent": (99, "Agent"), "token": (99, "API token")}

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MILLISECOND = dt.timedelta(milliseconds=1)
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str, check_circular=False)


def header() -> str:
    """Nothing precedes the first line."""
    return ""


def classify(action: str) -> tuple[int, str, int, str, int, str]:
    """(class_uid, class_name, category_uid, category_name, activity_id, activity_name) of an action."""
    verb = action.rsplit(".", 1)[-1]
    if action.startswith("auth."):
        return (*AUTHENTICATION, *_AUTH_ACTIVITIES.get(verb, _OTHER))
    return (*API_ACTIVITY, *_API_ACTIVITIES.get(verb, _OTHER))


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def ai_operation(row: dict[str, Any]) -> dict[str, Any]:
    """The AI operation profile attributes of a `model.call` event (ai_model, message_context)."""
    data = row["data"] if isinstance(row["data"], dict) else {}
    tokens = data.get("tokens") if isinstance(data.get("tokens"), dict) else {}
    prompt = _int_or_none(data.get("input_tokens", tokens.get("in")))
    completion = _int_or_none(data.get("output_tokens", tokens.get("out")))
    model = {
        "name": str(data.get("model", "")),
        "ai_provider": str(data.get("provider", data.get("provider_kind", ""))),
    }
    if row["target_id"]:
        model["uid"] = row["target_id"]
    context: dict[str, Any] = {
        "uid": row["model_call_id"] or str(row["id"]),
        "ai_role": "Assistant",
        "ai_role_id": 2,
    }
    if row["session_id"]:
        context["name"] = row["session_id"]
    if prompt is not None:
        context["prompt_tokens"] = prompt
    if completion is not None:
        context["completion_tokens"] = completion
    if prompt is not None and completion is not None:
        context["total_tokens"] = prompt + completion
    return {"ai_model": model, "message_context": context}


def document(row: dict[str, Any], version: str | None = None) -> dict[str, Any]:
    """The OCSF event of one event row (as read with `.values()`, plus `organization_slug`)."""
    action = row["action"]
    class_uid, class_name, category_uid, category_name, activity_id, activity_name = classify(action)
    outcome = row["outcome"]
    severity_id, severity = _SEVERITY.get(outcome, (99, "Other"))
    user_type_id, user_type = _USER_TYPES.get(row["actor_type"], (99, "Other"))
    event: dict[str, Any] = {
        "class_uid": class_uid,
        "class_name": class_name,
        "category_uid": category_uid,
        "category_name": category_name,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": class_uid * 100 + activity_id,
        "type_name": f"{class_name}: {activity_name}",
        "time": (row["occurred_at"] - _EPOCH) // _MILLISECOND,
        "severity_id": severity_id,
        "severity": severity,
        "status_id": 1 if outcome == "success" else 2,
        "status": "Success" if outcome == "success" else "Failure",
        "message": action,
        "actor": {
            "user": {
                "uid": row["actor_id"],
                "name": row["actor_display"],
                "type_id": user_type_id,
                "type": user_type,
            }
        },
        "metadata": {
            "version": SCHEMA_VERSION,
            "uid": str(row["id"]),
            "sequence": row["sequence"],
            "product": {"name": "Airlock", "vendor_name": "Airlock", "version": version or settings.AIRLOCK_VERSION},
            "tenant_uid": row["organization_slug"],
        },
    }
    if outcome != "success":
        detail = "denied" if outcome == "denied" else "failed"
        event["status_detail"] = f"{detail}: {row['error']}" if row["error"] else detail
    if row["session_id"]:
        event["metadata"]["correlation_uid"] = row["session_id"]
        event["actor"]["session"] = {"uid": row["session_id"]}
    if row["source_ip"]:
        event["src_endpoint"] = {"ip": row["source_ip"]}
    if row["user_agent"]:
        event["http_request"] = {"user_agent": row["user_agent"]}
    if class_uid == API_ACTIVITY[0]:
        event["api"] = {"operation": action, "request": {"uid": row["request_id"]}}
        if row["target_type"] or row["target_id"]:
            event["resources"] = [{"type": row["target_type"], "uid": row["target_id"], "name": row["target_display"]}]
    else:
        event["user"] = {"uid": row["actor_id"], "name": row["actor_display"]}
        if row["auth_method"]:
            event["auth_protocol"] = row["auth_method"]
        if row["auth_method"] == "mfa" or action.startswith("auth.mfa"):
            event["is_mfa"] = True
    if action == "model.call":
        event["metadata"]["profiles"] = ["ai_operation"]
        event.update(ai_operation(row))
    event["unmapped"] = {
        "action": action,
        "outcome": outcome,
        "occurred_at": format_time(row["occurred_at"]),
        "organization_id": row["organization_id"],
        "request_id": row["request_id"],
        "auth_method": row["auth_method"],
        "workspace_id": row["workspace_id"],
        "model_call_id": row["model_call_id"],
        "target": {"type": row["target_type"], "id": row["target_id"], "display": row["target_display"]},
        "data": row["data"],
        "prev_hash": row["prev_hash"],
        "hash": row["hash"],
    }
    return event


def render(row: dict[str, Any], version: str | None = None) -> str:
    """One event as an OCSF JSON line; `version` (Airlock's) defaults to the setting."""
    return _ENCODER.encode(document(row, version)) + "\n"
