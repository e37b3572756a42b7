"""CDS Hooks 2.0.1 response and discovery rules as plain assertions (cds-hooks.md sections 1, 3 and 6).

There is no official conformance suite; these re-implement the spec's invariants (cds-resp-1..6) so any
test can check a response. Each function returns a list of problems (empty = valid).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

ALLOWED_TOKENS = re.compile(
    r"^(context\.[A-Za-z]+|userPractitionerId|userPractitionerRoleId|userPatientId|userRelatedPersonId)$"
)
ALLOWED_QUERY = {"patient", "code", "status", "_sort", "_count", "subject", "date", "encounter", "category",
                 "_include"}  # beyond the subset clients SHOULD support; only <record type>:medication, see below
INCLUDING = ("MedicationRequest", "MedicationAdministration", "MedicationStatement")


def empties(value: Any, path: str = "$", *, allow_empty: frozenset[str] = frozenset()) -> list[str]:
    """Every null, empty string, empty list or empty object below ``value``."""
    problems: list[str] = []
    if value is None:
        return [f"{path} is null"]
    if isinstance(value, str | list | dict) and not value and path not in allow_empty:
        return [f"{path} is empty"]
    if isinstance(value, dict):
        for key, item in value.items():
            problems += empties(item, f"{path}.{key}", allow_empty=allow_empty)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            problems += empties(item, f"{path}[{i}]", allow_empty=allow_empty)
    return problems


def card_problems(card: dict[str, Any]) -> list[str]:
    problems = empties(card, "card")
    summary = card.get("summary")
    if not isinstance(summary, str) or not summary or len(summary) >= 140:
        problems.append("summary must be a string of fewer than 140 characters")
    if card.get("indicator") not in ("info", "warning", "critical"):
        problems.append("indicator must be info, warning or critical")
    source = card.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("label"), str):
        problems.append("source.label is required")
    suggestions = card.get("suggestions")
    if suggestions:
        behaviour = card.get("selectionBehavior")
        if behaviour not in ("at-most-one", "any"):
            problems.append("selectionBehavior is required with suggestions (cds-resp-6)")
        recommended = [s for s in suggestions if s.get("isRecommended")]
        if behaviour == "at-most-one" and len(recommended) > 1:
            problems.append("at most one recommended suggestion with at-most-one (cds-resp-1)")
        for s in suggestions:
            if not isinstance(s.get("label"), str):
                problems.append("suggestion.label is required")
            for action in s.get("actions", []):
                if action.get("type") not in ("create", "update", "delete"):
                    problems.append("action.type must be create, update or delete")
                if not isinstance(action.get("description"), str):
                    problems.append("action.description is required")
                if action.get("type") in ("create", "update") and not isinstance(action.get("resource"), dict):
                    problems.append("create/update actions need a resource")
                if action.get("type") == "delete" and not isinstance(action.get("resourceId"), str):
                    problems.append("delete actions should carry resourceId (cds-resp-2)")
    for reason in card.get("overrideReasons", []):
        if not all(isinstance(reason.get(k), str) and reason.get(k) for k in ("code", "system", "display")):
            problems.append("overrideReasons need code, system and display (cds-resp-4)")
    for link in card.get("links", []):
        if link.get("type") not in ("absolute", "smart") or not link.get("url") or not link.get("label"):
            problems.append("link needs label, url and type absolute|smart")
        if "appContext" in link and link.get("type") != "smart":
            problems.append("appContext only on smart links (cds-resp-3)")
    return problems


def response_problems(body: Any) -> list[str]:
    if not isinstance(body, dict) or not isinstance(body.get("cards"), list):
        return ["response must be an object with a cards array"]
    problems: list[str] = []
    for key, value in body.items():
        if key != "cards":
            problems += empties(value, f"response.{key}")
    for card in body["cards"]:
        problems += card_problems(card)
    return problems


def template_problems(template: str) -> list[str]:
    problems = []
    for token in re.findall(r"\{\{(.*?)\}\}", template):
        if not ALLOWED_TOKENS.match(token.strip()):
            problems.append(f"token {{{{{token}}}}} is not a CDS Hooks 2.0 prefetch token")
    if "sort:desc" in template:
        problems.append("sort:desc is not FHIR R4; use _sort=-date")
    parts = urlsplit(template)
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        base = name.split(":", 1)[0]
        if base not in ALLOWED_QUERY:
            problems.append(f"query parameter {name} is outside the allowed prefetch subset")
        if base == "_include" and value not in {f"{t}:medication" for t in INCLUDING}:
            problems.append(f"_include={value} is not the Medication of a medication record")
        if ":" in name and not name.endswith(":in"):
            problems.append(f"modifier in {name} is not allowed (only :in)")
    return problems


# Context fields that are NOT prefetch tokens in the hook library's R4 definitions ("Prefetch Token: No"):
# objects and arrays (2.0: "only root-level fields with a primitive value ... are eligible").
NOT_TOKENS = {"order-sign": {"draftOrders"}, "order-select": {"draftOrders", "selections"}, "patient-view": set()}


def discovery_problems(body: Any) -> list[str]:
    if not isinstance(body, dict) or not isinstance(body.get("services"), list):
        return ["discovery must be an object with a services array"]
    problems = empties(body, "discovery", allow_empty=frozenset({"discovery.services"}))
    pairs = [(s.get("id"), s.get("hook")) for s in body["services"] if isinstance(s, dict)]
    if len(set(pairs)) != len(pairs):
        problems.append("two services with the same id and hook")
    for service in body["services"]:
        for field in ("hook", "id", "description"):
            if not isinstance(service.get(field), str):
                problems.append(f"service.{field} is required")
        for template in (service.get("prefetch") or {}).values():
            problems += template_problems(template)
            for token in re.findall(r"\{\{\s*context\.([A-Za-z]+)\s*\}\}", template):
                if token in NOT_TOKENS.get(service.get("hook", ""), set()):
                    problems.append(f"context.{token} is not a prefetch token of {service.get('hook')}")
    return problems
