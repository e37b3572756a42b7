"""Synthetic FHIR fixtures: loading, moving them in time, and a tiny in-memory FHIR search.

The scenarios under ``fhir_fixtures/scenarios/<id>/`` are written by ``fhir_fixtures/build_fixtures.py``
relative to one reference instant, :data:`ANCHOR`. ``rebase`` moves a scenario to another "now" (live
demos); ``search`` and ``fill_prefetch`` answer the service's prefetch templates from a list of resources,
so a request's ``prefetch`` is exactly what a FHIR server holding the scenario's bundle would return.

Everything here is synthetic test data (no real patient), stdlib only, and never reads the clock.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import cds_service

ANCHOR = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
"""The fixtures' reference instant ("now" for every scenario)."""

_HOOK_NAMESPACE = "0f6b8a4e-2d7c-5b1e-9c3a-6e4d2f1a8b70"  # uuid5 namespace of derived hookInstances
PACKAGED_FIXTURES = "fixture_data"
"""Folder inside the installed ``cds_service`` package that holds a copy of ``fhir_fixtures/scenarios`` (setup.py)."""


def default_root() -> Path:
    """The fixtures of an installed wheel (``cds_service/fixture_data``), else ``fhir_fixtures/`` of the checkout."""
    package = Path(cds_service.__file__).resolve().parent  # wherever this module lives inside the package
    packaged = package / PACKAGED_FIXTURES
    if (packaged / "scenarios").is_dir():
        return packaged
    return package.parent / "fhir_fixtures"


FIXTURES_ROOT = default_root()

JsonDict = dict[str, Any]

# ---------------------------------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One fixture scenario: a transaction bundle, an order-sign request and the expected outcome."""

    id: str
    title: str
    shows: str
    patient_id: str
    bundle: JsonDict
    request: JsonDict
    expected: JsonDict

    @property
    def resources(self) -> list[JsonDict]:
        """The resources of the transaction bundle (what a FHIR server would hold)."""
        return [entry["resource"] for entry in self.bundle.get("entry", []) if "resource" in entry]

    @property
    def draft_orders(self) -> list[JsonDict]:
        """The resources in ``context.draftOrders``."""
        bundle = self.request.get("context", {}).get("draftOrders", {})
        return [entry["resource"] for entry in bundle.get("entry", []) if "resource" in entry]

    def request_for(self, hook: str) -> JsonDict:
        """The scenario's request for ``hook`` (see :func:`request_for_hook`)."""
        return request_for_hook(self.request, hook)


HOOKS = ("patient-view", "order-select", "order-sign")


def request_for_hook(order_sign_request: JsonDict, hook: str) -> JsonDict:
    """An order-sign request turned into the same moment's request for ``hook`` (same patient, prefetch and
    ``fhirServer``): ``patient-view`` drops ``draftOrders`` (the chart is opened, nothing is being ordered);
    ``order-select`` keeps them and selects every draft that has an id (the drug just picked), as the
    reference sandbox's Rx View does."""
    body = copy.deepcopy(order_sign_request)
    body["hook"] = hook
    if hook != "order-sign":
        body["hookInstance"] = str(uuid.uuid5(uuid.UUID(_HOOK_NAMESPACE), f"{body.get('hookInstance')}:{hook}"))
    context = body.setdefault("context", {})
    if hook == "patient-view":
        context.pop("draftOrders", None)
    elif hook == "order-select":
        entries = (context.get("draftOrders") or {}).get("entry") or []
        context["selections"] = [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in entries
                                 if isinstance(e, dict) and isinstance(e.get("resource"), dict)
                                 and e["resource"].get("id")] or ["MedicationRequest/nothing-selected"]
    return body


def _read_json(path: Path) -> JsonDict:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _load_dir(directory: Path) -> Scenario:
    expected = _read_json(directory / "expected.json")
    request = _read_json(directory / "request.json")
    return Scenario(
        id=directory.name,
        title=str(expected.get("title", directory.name)),
        shows=str(expected.get("shows", "")),
        patient_id=str(request["context"]["patientId"]),
        bundle=_read_json(directory / "bundle.json"),
        request=request,
        expected=expected,
    )


def load_scenarios(root: Path | None = None) -> list[Scenario]:
    """All scenarios under ``<root>/scenarios/``, sorted by id (default root: :data:`FIXTURES_ROOT`)."""
    base = (root if root is not None else FIXTURES_ROOT) / "scenarios"
    dirs = sorted(p for p in base.iterdir() if p.is_dir() and (p / "expected.json").is_file())
    return [_load_dir(d) for d in dirs]


def load_scenario(scenario_id: str, root: Path | None = None) -> Scenario:
    """One scenario by id; ``KeyError`` when it does not exist."""
    directory = (root if root is not None else FIXTURES_ROOT) / "scenarios" / scenario_id
    if not (directory / "expected.json").is_file():
        raise KeyError(scenario_id)
    return _load_dir(directory)


# ---------------------------------------------------------------------------------------------------
# Moving fixtures in time
# ---------------------------------------------------------------------------------------------------

_DATETIME = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_UNSHIFTED_KEYS = frozenset({"birthDate", "deceasedDateTime"})


def _shift_datetime(match: re.Match[str], delta: timedelta) -> str:
    base, fraction, zone = match.groups()
    digits = len(fraction) - 1 if fraction else 0
    micro = int((fraction[1:] + "000000")[:6]) if fraction else 0
    if zone == "Z":
        tz = UTC
    else:
        sign = -1 if zone[0] == "-" else 1
        tz = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    moved = datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(microsecond=micro, tzinfo=tz) + delta
    text = moved.strftime("%Y-%m-%dT%H:%M:%S")
    micro_text = f"{moved.microsecond:06d}"
    digits = max(digits, len(micro_text.rstrip("0")))  # never drop a sub-second part of the delta
    if digits:
        text += "." + micro_text.ljust(digits, "0")[:digits]
    return text + zone


def _shift_date(value: str, delta: timedelta) -> str:
    # A date moves with its noon (UTC): a delta of whole days moves it by exactly that many days, and a
    # delta of d days + h hours moves it to the calendar day that noon lands on (ANCHOR is at noon UTC, so
    # the anchor date always becomes the date of ANCHOR + delta).
    day = date.fromisoformat(value)
    return (datetime.combine(day, time(12, 0), UTC) + delta).date().isoformat()


def shift_value(value: str, delta: timedelta) -> str:
    """Shift one FHIR ``dateTime``/``instant`` (with time zone) or ``date`` string; other strings unchanged."""
    try:
        match = _DATETIME.match(value)
        if match:
            return _shift_datetime(match, delta)
        if _DATE.match(value):
            return _shift_date(value, delta)
    except (ValueError, OverflowError):
        return value  # looks like a date but is not a valid one: leave it alone
    return value


def _rebase(obj: Any, delta: timedelta, key: str | None) -> Any:
    if isinstance(obj, dict):
        return {k: _rebase(v, delta, k) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rebase(v, delta, key) for v in obj]
    if isinstance(obj, str) and key not in _UNSHIFTED_KEYS:
        return shift_value(obj, delta)
    return obj


def rebase(obj: Any, delta: timedelta) -> Any:
    """Deep copy of a JSON value with every dateTime/instant shifted by ``delta``.

    Full date-times with a time zone (``YYYY-MM-DDThh:mm:ss(.sss)(Z|+hh:mm)``) keep their zone and
    precision; plain dates (``YYYY-MM-DD``) move by whole days. Values under ``birthDate`` and
    ``deceasedDateTime`` are never moved. Partial dates (``YYYY``, ``YYYY-MM``) are left alone.
    """
    return _rebase(obj, delta, None)


def delta_to(now: datetime) -> timedelta:
    """The whole-second delta that moves the fixtures from :data:`ANCHOR` to ``now`` (aware datetime)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return timedelta(seconds=round((now - ANCHOR).total_seconds()))


# ---------------------------------------------------------------------------------------------------
# In-memory FHIR search (the subset our prefetch templates use)
# ---------------------------------------------------------------------------------------------------

# FHIR search parameter `code` per resource type (R4): the element it reads.
_CODE_ELEMENT = {"MedicationRequest": "medicationCodeableConcept", "MedicationStatement": "medicationCodeableConcept"}


def _parse_query(query: str) -> list[tuple[str, str]]:
    params: list[tuple[str, str]] = []
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        params.append((unquote(name), unquote(value)))
    return params


def _references(resource: JsonDict) -> list[str]:
    refs: list[str] = []
    for element in ("subject", "patient"):
        value = resource.get(element)
        if isinstance(value, dict) and isinstance(value.get("reference"), str):
            refs.append(value["reference"])
    return refs


def _matches_patient(resource: JsonDict, value: str) -> bool:
    target = value if "/" in value else f"Patient/{value}"
    return any(ref == target or ref.endswith("/" + target) for ref in _references(resource))


def _matches_token(resource: JsonDict, value: str) -> bool:
    concept = resource.get(_CODE_ELEMENT.get(str(resource.get("resourceType")), "code"))
    codings = concept.get("coding", []) if isinstance(concept, dict) else []
    for token in value.split(","):
        system, bar, code = token.rpartition("|")
        for coding in codings:
            if not isinstance(coding, dict):
                continue
            if bar and system and coding.get("system") != system:
                continue
            if bar and not system and coding.get("system"):  # "|code" = code without a system
                continue
            if code and coding.get("code") != code:
                continue
            return True
    return False


def _matches_status(resource: JsonDict, value: str) -> bool:
    return resource.get("status") in value.split(",")


def _parse_fhir_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    text = value.replace("Z", "+00:00")
    try:
        if len(text) == 4:
            return datetime(int(text), 1, 1, tzinfo=UTC)
        if len(text) == 7:
            return datetime(int(text[:4]), int(text[5:7]), 1, tzinfo=UTC)
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _sort_date(resource: JsonDict) -> datetime | None:
    period = resource.get("effectivePeriod")
    for value in (
        resource.get("effectiveDateTime"),
        period.get("start") if isinstance(period, dict) else None,
        resource.get("issued"),
    ):
        parsed = _parse_fhir_time(value)
        if parsed is not None:
            return parsed
    return None


def _sort(matches: list[JsonDict], descending: bool) -> list[JsonDict]:
    dated = [(d, r) for r in matches if (d := _sort_date(r)) is not None]
    undated = [r for r in matches if _sort_date(r) is None]
    dated.sort(key=lambda pair: pair[0], reverse=descending)  # stable in both directions
    return [r for _, r in dated] + undated  # resources without a date come last, as on real servers


def searchset(resources: list[JsonDict], total: int | None = None, included: list[JsonDict] | None = None
              ) -> JsonDict:
    """A searchset Bundle holding copies of ``resources`` (search mode ``match``) and of ``included`` (mode
    ``include``; ``entry`` omitted when empty, as FHIR JSON requires). ``total`` counts matches only."""
    count = len(resources) if total is None else total
    bundle: JsonDict = {"resourceType": "Bundle", "type": "searchset", "total": count}
    entries: list[JsonDict] = []
    for mode, group in (("match", resources), ("include", included or [])):
        for resource in group:
            entry: JsonDict = {}
            if resource.get("id"):
                entry["fullUrl"] = f"{resource['resourceType']}/{resource['id']}"
            entry["resource"] = copy.deepcopy(resource)
            entry["search"] = {"mode": mode}
            entries.append(entry)
    if entries:
        bundle["entry"] = entries
    return bundle


def search(resources: list[JsonDict], template_url: str) -> JsonDict | None:
    """Answer a relative FHIR read (``Type/id``) or type-level search (``Type?params``) from ``resources``.

    Read: a copy of the resource, or ``None``. Search: a searchset Bundle. Parameters honoured: ``patient``
    (``subject``/``patient`` reference), ``code`` (comma-separated ``system|code`` OR-list), ``status``
    (comma OR), ``_sort=-date`` / ``_sort=date``, ``_count`` and ``_include=<Type>:medication`` (the
    Medications the page's records reference as ``Medication/<id>``, once each, after the matches, as
    servers do); every other parameter is ignored. ``total`` counts all matches, before ``_count``
    truncates the page.
    """
    path, _, query = template_url.strip().lstrip("/").partition("?")
    parts = [p for p in path.split("/") if p]
    if len(parts) == 2:
        rtype, rid = parts
        for resource in resources:
            if resource.get("resourceType") == rtype and resource.get("id") == rid:
                return copy.deepcopy(resource)
        return None
    if len(parts) != 1:
        raise ValueError(f"unsupported FHIR query: {template_url!r}")

    matches = [r for r in resources if r.get("resourceType") == parts[0]]
    sort: str | None = None
    count: int | None = None
    include = False
    for name, value in _parse_query(query):
        if name == "patient":
            matches = [r for r in matches if _matches_patient(r, value)]
        elif name == "code":
            matches = [r for r in matches if _matches_token(r, value)]
        elif name == "status":
            matches = [r for r in matches if _matches_status(r, value)]
        elif name == "_sort":
            sort = value
        elif name == "_include":
            include = include or value == f"{parts[0]}:medication"
        elif name == "_count":
            try:
                count = max(0, int(value))
            except ValueError:
                count = None
    if sort in ("-date", "date"):
        matches = _sort(matches, descending=sort == "-date")
    total = len(matches)
    if count is not None:
        matches = matches[:count]
    return searchset(matches, total=total, included=_included_medications(resources, matches) if include else None)


def _included_medications(resources: list[JsonDict], matches: list[JsonDict]) -> list[JsonDict]:
    """The Medications ``matches`` reference (``medicationReference`` ``Medication/<id>``), in order, once each."""
    by_id = {r.get("id"): r for r in resources if r.get("resourceType") == "Medication"}
    wanted: dict[str, JsonDict] = {}
    for resource in matches:
        element = resource.get("medicationReference")
        reference = element.get("reference") if isinstance(element, dict) else None
        if isinstance(reference, str) and reference.startswith("Medication/"):
            medication = by_id.get(reference.removeprefix("Medication/").split("/_history")[0])
            if medication is not None:
                wanted.setdefault(str(medication["id"]), medication)
    return list(wanted.values())


def fill_prefetch(resources: list[JsonDict], templates: dict[str, str], patient_id: str) -> dict[str, Any]:
    """The ``prefetch`` object a CDS client would send for ``templates`` against ``resources``.

    ``{{context.patientId}}`` is replaced by ``patient_id``. A read that finds nothing gives ``None``; a
    search without hits gives an empty searchset Bundle. A template that still holds an unresolved token
    is omitted, as the reference client does.
    """
    prefetch: dict[str, Any] = {}
    for key, template in templates.items():
        url = template.replace("{{context.patientId}}", patient_id)
        if "{{" in url:
            continue
        prefetch[key] = search(resources, url)
    return prefetch
