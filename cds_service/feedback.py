"""Card feedback: size limits on what a client may send, and the records the store keeps.

Feedback is stored by :meth:`cds_service.store.Store.add_feedback` in the same transaction that decides
whether each item is new, before the HTTP answer; a storage failure is a 503 and nothing is marked as
seen, so the client's resend is stored (once). Kept per item: service id, card uuid, outcome, outcome
timestamp, accepted suggestion ids, the override reason's code and system, the client's ``iss``. Not
kept: the clinician's free-text ``userComment`` and any other member.
"""

from __future__ import annotations

import json
from typing import Any

from cds_service.config import Settings
from cds_service.errors import BadRequest, PayloadTooLarge
from cds_service.store.base import MAX_LIST, MAX_TEXT, FeedbackRecord


def check_limits(body: Any, settings: Settings) -> None:
    """413 when the request holds too many items or one item is too large (before any other work)."""
    if not isinstance(body, dict) or not isinstance(body.get("feedback"), list):
        return  # parse_feedback names the problem
    items = body["feedback"]
    if len(items) > settings.feedback_max_items:
        raise PayloadTooLarge(f"feedback holds {len(items)} items; at most {settings.feedback_max_items} per request",
                              field="feedback")
    for i, item in enumerate(items):
        size = len(json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))
        if size > settings.feedback_max_item_bytes:
            raise PayloadTooLarge(f"feedback[{i}] is {size} bytes; at most {settings.feedback_max_item_bytes}",
                                  field=f"feedback[{i}]")


def _short(value: Any, where: str) -> str:
    if len(value) > MAX_TEXT:
        raise BadRequest(f"field '{where}' is longer than {MAX_TEXT} characters", field=where)
    return str(value)


def records(service_id: str, items: list[dict[str, Any]], *, iss: str | None, now: float) -> list[FeedbackRecord]:
    """Turn parsed feedback items into bounded store records (400 for an over-long identifier)."""
    out = []
    for i, item in enumerate(items):
        where = f"feedback[{i}]."
        accepted = item.get("acceptedSuggestions") or []
        if len(accepted) > MAX_LIST:
            raise BadRequest(f"field '{where}acceptedSuggestions' lists more than {MAX_LIST} suggestions",
                             field=f"{where}acceptedSuggestions")
        reason = item.get("overrideReason")
        code = reason.get("code") if isinstance(reason, dict) else None
        system = reason.get("system") if isinstance(reason, dict) else None
        out.append(FeedbackRecord(
            service_id=service_id,
            card_uuid=_short(item["card"], where + "card"),
            outcome=item["outcome"],
            outcome_timestamp=_short(item["outcomeTimestamp"], where + "outcomeTimestamp"),
            received_at=now,
            accepted_suggestions=tuple(_short(s, where + "acceptedSuggestions") for s in accepted),
            override_code=_short(code, where + "overrideReason.reason.code") if isinstance(code, str) else None,
            override_system=_short(system, where + "overrideReason.reason.system") if isinstance(system, str)
            else None,
            client_iss=iss,
        ))
    return out
