"""``/worklist``: the surveillance worklist for the pharmacist or rapid-response team.

``GET /worklist`` lists the open entries (``new`` and ``seen``; ``?state=`` for others) as JSON, or as a small
HTML table when the client asks for HTML; ``POST /worklist/<id>`` with ``{"state": ..., "reason": ...}``
marks one seen, resolved or dismissed (a dismissal needs a reason). Both need
``Authorization: Bearer <NMS_CDS_WORKLIST_TOKEN>``; without that setting the routes answer 404, except in
development. Entries hold what the card held: the patient reference, the summary, the evidence references.
"""

from __future__ import annotations

import hmac
import time
from datetime import UTC, datetime
from html import escape
from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify, request

from cds_service.errors import StoreUnavailable
from cds_service.store.worklist import STATES, Entry, Worklist

bp = Blueprint("worklist", __name__)


def _worklist() -> Worklist:
    runtime = current_app.extensions["nms_cds"]
    token = runtime.settings.worklist_token
    if token is None:
        if not runtime.settings.is_development:
            abort(404)
    else:
        given = request.headers.get("Authorization", "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, ("Bearer " + token.get_secret_value()).encode("utf-8")):
            abort(401)
    try:
        return Worklist(runtime.store)
    except TypeError:
        abort(404)


def _json(e: Entry) -> dict[str, Any]:
    return {"id": e.id, "patient": e.patient_ref, "indicator": e.indicator, "summary": e.summary,
            "card_uuid": e.card_uuid, "evidence": list(e.evidence), "state": e.state, "reason": e.state_reason,
            "created_at": datetime.fromtimestamp(e.created_at, UTC).isoformat()}


def _html(entries: list[Entry]) -> str:
    rows = "".join(
        f"<tr><td>{e.id}</td><td>{escape(e.indicator)}</td><td>{escape(e.patient_ref)}</td>"
        f"<td>{escape(e.summary)}</td><td>{escape(e.state)}</td>"
        f"<td>{datetime.fromtimestamp(e.created_at, UTC):%Y-%m-%d %H:%M} UTC</td></tr>" for e in entries)
    return ("<!doctype html><meta charset=utf-8><title>nms-cds worklist</title><h1>Possible NMS: worklist</h1>"
            "<table><tr><th>#</th><th>indicator</th><th>patient</th><th>summary</th><th>state</th><th>found</th>"
            f"</tr>{rows}</table>")


@bp.get("/worklist")
def entries() -> Response:
    worklist = _worklist()
    states = request.args.getlist("state") or ["new", "seen"]
    if any(s not in STATES for s in states):
        abort(400, description=f"state must be one of {', '.join(STATES)}")
    try:
        found = worklist.entries(states)
    except StoreUnavailable:
        abort(503)
    if request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html":
        response = Response(_html(found), content_type="text/html; charset=utf-8")
        response.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'self'"
        return response
    return jsonify({"entries": [_json(e) for e in found]})


@bp.post("/worklist/<int:entry_id>")
def set_state(entry_id: int) -> Response:
    worklist = _worklist()
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("state"), str):
        abort(400, description='expected {"state": "seen" | "resolved" | "dismissed", "reason": "..."}')
    reason = body.get("reason")
    try:
        changed = worklist.set_state(entry_id, body["state"], reason if isinstance(reason, str) else None,
                                     now=time.time())
    except ValueError as exc:
        abort(400, description=str(exc))
    except StoreUnavailable:
        abort(503)
    if not changed:
        abort(404)
    return jsonify({"id": entry_id, "state": body["state"]})
