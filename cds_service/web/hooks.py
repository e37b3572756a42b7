"""The CDS Hooks routes: discovery, service calls and feedback. The calling client's policy
(:mod:`cds_service.auth.policy`, narrowed by the request's options, :mod:`cds_service.services.client_options`)
decides which services it discovers and what each answer carries; silent mode audits the cards and returns none."""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Blueprint, Response, g, jsonify

from cds_service import feedback as feedback_items
from cds_service import metrics
from cds_service.errors import NotFound
from cds_service.protocol.parse import parse_feedback, parse_hook_request
from cds_service.services import client_options
from cds_service.web import guards

#: The CDS Hooks version discovery states (3.0 ballot: a ``version`` member of the discovery response).
CDS_HOOKS_VERSION = "3.0"

bp = Blueprint("cds_hooks", __name__)
log = logging.getLogger("cds_service.http")


@bp.get("/cds-services")
def discovery() -> Response:
    guards.authenticate("/cds-services")
    rt = guards.runtime()
    policy = rt.policy_for(g.get("iss"))
    extension = client_options.discovery_extension(policy)
    return jsonify({"version": CDS_HOOKS_VERSION,
                    "services": [{**svc.definition(), "extension": extension} for svc in rt.services.values()
                                 if svc.hook in policy.hooks]})


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response:
    rt = guards.runtime()
    service = rt.services.get(service_id)
    guards.authenticate(f"/cds-services/{service_id}")
    if service is None:
        raise NotFound(f"no CDS service with id '{service_id[:64]}'")
    body = guards.body()
    hook_request = parse_hook_request(body, expected_hook=service.hook)
    g.hook_instance = hook_request.hook_instance
    policy = client_options.narrowed(rt.policy_for(g.get("iss")), body)
    if service.hook not in policy.hooks:  # not served to this client: no evaluation, no card
        log.info("hook not enabled for this client", extra={"event": "hook-disabled", "service": service_id})
        return jsonify({"cards": []})
    response, report = service.call(hook_request)
    cards = client_options.apply(policy, response.get("cards", []))  # the client's policy first
    shown = rt.quiet_cards(cards, hook=service.hook, service_id=service_id,
                           hook_instance=hook_request.hook_instance, patient_id=hook_request.patient_id,
                           report=report, iss=g.get("iss"))
    suppressed = len(cards) - len(shown)
    cards = shown
    response = {**response, "cards": [] if policy.silent else cards}
    rt.audit_cards(cards, hook=service.hook, service_id=service_id, hook_instance=hook_request.hook_instance,
                   patient_id=hook_request.patient_id, report=report, iss=g.get("iss"), silent=policy.silent)
    if policy.silent:
        metrics.silent_cards(service_id, service.hook, [str(card.get("indicator")) for card in cards])
    extra: dict[str, Any] = {
        "event": "hook-call",
        "service": service_id,
        "prefetch": report.keys,
        "fhir_requests": report.fhir_requests,
        "fhir_server": report.fhir_server,
        "indicator": str(cards[0].get("indicator")) if cards else "none",  # after the client's policy
        "suppressed": suppressed,
        "mode": policy.mode,
        "score": report.score,
        "timings_ms": {k: round(v, 1) for k, v in report.timings_ms.items()},
    }
    if rt.settings.log_patient_ids:
        extra["patient_id"] = hook_request.patient_id
    log.info("hook answered", extra=extra)
    metrics.observe_hook(service_id, service.hook, time.perf_counter() - g.started,
                         [str(card.get("indicator")) for card in response.get("cards", [])])
    return jsonify(response)


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    rt = guards.runtime()
    guards.authenticate(f"/cds-services/{service_id}/feedback")
    if service_id not in rt.services:
        raise NotFound(f"no CDS service with id '{service_id[:64]}'")
    body = guards.body()
    feedback_items.check_limits(body, rt.settings)
    items = parse_feedback(body)
    # Stored (and "new" decided) in one transaction before the answer; StoreUnavailable → 503, nothing kept.
    new = rt.store.add_feedback(feedback_items.records(service_id, items, iss=g.get("iss"), now=rt.wall_clock()))
    rt.maybe_purge()
    log.info("feedback stored", extra={"event": "feedback", "service": service_id,
                                       "feedback_items": len(items), "feedback_new": new})
    return jsonify({"received": len(items), "new": new})
