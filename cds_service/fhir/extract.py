"""Flatten FHIR R4 resources into the clinical core's plain records.

Raw JSON is filtered by resource type and code *before* anything else, so a long record costs time in
proportion to the relevant observations, not to its size. A relevant resource that is "plain" (see
:func:`plain_observation`) is checked and flattened straight from its JSON; any other goes through the
R4B models, whose answer the plain path reproduces exactly. Parsing is lenient
(:func:`cds_service.fhir.models.parse`); what cannot be read is counted, never fatal.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import cache
from typing import Any

from fhir_core.types import DateTime as _FhirDateTime
from fhir_core.types import Decimal as _FhirDecimal
from fhir_core.types import Instant as _FhirInstant

from cds_service.clinical.model import Coding, HistoryInput, MedicationInput, MedicationKind, ObservationInput
from cds_service.clinical.rules import LAB_CONCEPTS, VITAL_CONCEPTS
from cds_service.clinical.valuesets import LOINC, RXNORM, load
from cds_service.fhir.models import REASONS, ParseResult, parse, tidy_code


@dataclass
class Extracted:
    medications: list[MedicationInput] = field(default_factory=list)
    observations: list[ObservationInput] = field(default_factory=list)
    history: list[HistoryInput] = field(default_factory=list)
    sex: str | None = None
    unreadable: int = 0  # resources dropped because they could not be parsed
    repairs: int = 0
    # what could not be read, by (kind, reason): kind is one of UNREAD_KINDS, reason one of models.REASONS
    unread: Counter[tuple[str, str]] = field(default_factory=Counter)
    # older versions (or differing repeats) of a resource listed more than once under one type and id: not used
    duplicates: int = 0
    # (resource type, id) -> (version key, the raw resource used): one resource per type and id
    seen: dict[tuple[str, str], tuple[tuple[str, str], Mapping[str, Any]]] = field(default_factory=dict)

    def unread_items(self) -> tuple[tuple[str, str, int], ...]:
        """(kind, reason, count) of what could not be read, in a stable order."""
        return tuple((kind, reason, n) for (kind, reason), n in sorted(self.unread.items()))

    def unread_labels(self) -> Counter[tuple[str, str]]:
        """The unreadable counts as bounded metrics labels: a kind outside UNREAD_KINDS or a reason outside
        models.REASONS is counted as "other"."""
        labels: Counter[tuple[str, str]] = Counter()
        for (kind, reason), n in self.unread.items():
            labels[(kind if kind in UNREAD_KINDS else "other", reason if reason in REASONS else "other")] += n
        return labels


# The kinds of resource counted when unreadable (bounded: they are metrics labels, and the card words them).
UNREAD_KINDS = ("temperature", "heart-rate", "respiratory-rate", "blood-pressure", "ck", "lab", "culture",
                "observation", "medication", "draft-order", "condition", "allergy")
_CONCEPT_KIND = {"body-temperature": "temperature", "heart-rate": "heart-rate", "respiratory-rate": "respiratory-rate",
                 "systolic-bp": "blood-pressure", "diastolic-bp": "blood-pressure", "bp-panel": "blood-pressure",
                 "creatine-kinase": "ck"}


def observation_kind(raw: Mapping[str, Any]) -> str:
    """The kind of a (relevant) Observation for the unreadable count, from its first known LOINC code."""
    vs = load()
    concept = raw.get("code")
    for coding in (concept.get("coding") or ()) if isinstance(concept, dict) else ():
        code = coding.get("code") if isinstance(coding, dict) else None
        if not isinstance(code, str):
            continue
        if code in vs.culture_codes:
            return "culture"
        known = vs.observations_by_code.get(code)
        if known is not None:
            return _CONCEPT_KIND.get(known.concept, "lab" if known.concept in LAB_CONCEPTS else "observation")
    return "observation"


def _version(raw: Mapping[str, Any]) -> tuple[str, str]:
    """(lastUpdated, versionId) of ``meta``, "" where absent or not a string."""
    meta = raw.get("meta")
    if not isinstance(meta, dict):
        return ("", "")
    updated, version = meta.get("lastUpdated"), meta.get("versionId")
    return (updated if isinstance(updated, str) else "", version if isinstance(version, str) else "")


def _instant(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value).astimezone(UTC) if value else None
    except (ValueError, OverflowError):
        return None


def _newer(version: tuple[str, str], than: tuple[str, str]) -> bool:
    """Whether ``version`` is a later version than ``than``: by ``meta.lastUpdated`` when both have one and
    they differ, else by a numeric ``meta.versionId``; when neither tells, not newer (the first listed stays)."""
    new, old = _instant(version[0]), _instant(than[0])
    if new is not None and old is not None and new != old:
        return new > old
    if version[1].isdigit() and than[1].isdigit() and int(version[1]) != int(than[1]):
        return int(version[1]) > int(than[1])
    return False


def first_listing(raw: Mapping[str, Any], out: Extracted) -> str:
    """One resource per type and id, the newest version winning: "first" (the first of its id: use it),
    "newer" (a later version of one already used: use it instead, the caller removes the older), "older" (an
    older or undated repeat: not used, counted as a duplicate unless it is the very same JSON) or "no id"."""
    ident, kind = raw.get("id"), raw.get("resourceType")
    if not isinstance(ident, str) or not ident or not isinstance(kind, str):
        return "no id"
    key = (kind, ident)
    version = _version(raw)
    known = out.seen.get(key)
    if known is None:
        out.seen[key] = (version, raw)
        return "first"
    if known[1] is raw or known[1] == raw:
        return "older"  # the same resource in two answers (e.g. two overlapping queries): nothing is lost
    out.duplicates += 1
    if _newer(version, known[0]):
        out.seen[key] = (version, raw)
        return "newer"
    return "older"


def newest(resources: Iterable[Mapping[str, Any]], out: Extracted) -> list[Mapping[str, Any]]:
    """``resources`` with one resource per type and id (the newest version, at the place of the first
    listing); resources without an id are all kept."""
    kept: list[Mapping[str, Any]] = []
    for raw in resources:
        verdict = first_listing(raw, out)
        if verdict == "newer":
            key = (raw["resourceType"], raw["id"])
            kept = [r for r in kept if (r.get("resourceType"), r.get("id")) != key]
        if verdict != "older":
            kept.append(raw)
    return kept


def when(value: Any) -> datetime | None:
    """A FHIR date/dateTime/instant as an aware UTC datetime; partial dates (YYYY-MM) give None."""
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return None


def _num(value: Any) -> float | None:
    if isinstance(value, Decimal | int | float) and not isinstance(value, bool):
        number = float(value)
        return number if number == number and abs(number) != float("inf") else None
    return None


def _codings(concept: Any) -> tuple[Coding, ...]:
    if concept is None:
        return ()
    return tuple(Coding(c.system, c.code, c.display) for c in (concept.coding or []))


def _texts(concept: Any) -> list[str]:
    if concept is None:
        return []
    out = [concept.text] if concept.text else []
    out.extend(c.display for c in (concept.coding or []) if c.display)
    return out


@cache
def relevant_loinc() -> frozenset[str]:
    vs = load()
    wanted = set(VITAL_CONCEPTS) | set(LAB_CONCEPTS) | {"bp-panel"}
    return frozenset({code for code, c in vs.observations_by_code.items() if c.concept in wanted}
                     | vs.culture_codes)


def _has_code(resource: Mapping[str, Any], wanted: frozenset[str]) -> bool:
    """Whether a LOINC (or system-less) coding of ``resource.code`` is one of ``wanted`` (runs on every
    Observation of the record, so no set is built)."""
    concept = resource.get("code")
    if isinstance(concept, dict):
        for coding in concept.get("coding") or ():
            if isinstance(coding, dict):
                code = coding.get("code")  # the code first: in a long record most are not wanted
                if isinstance(code, str) and code in wanted and coding.get("system") in (LOINC, None):
                    return True
    return False


def _model(result: ParseResult, out: Extracted, kind: str) -> Any:
    """The parsed model, counting repairs; None (counted as unreadable, by ``kind`` and reason) when the
    resource could not be read."""
    out.repairs += bool(result.repairs)
    if result.model is None:
        out.unreadable += 1
        out.unread[(kind, result.reason or "invalid structure")] += 1
    return result.model


def observations(resources: Iterable[Mapping[str, Any]], out: Extracted) -> None:
    """The relevant Observations of ``resources`` into ``out.observations``; one per id across calls (the
    newest version: see :func:`first_listing`)."""
    wanted = relevant_loinc()
    memo = _Memo()
    # one comprehension over the record (a long one is mostly other codes), then the work on what is left
    for raw in [r for r in resources if r.get("resourceType") == "Observation" and _has_code(r, wanted)]:
        verdict = first_listing(raw, out)
        if verdict == "older":
            continue
        if verdict == "newer":  # a newer version of one already read: it replaces what the older gave
            ref = f"Observation/{raw['id']}"
            out.observations = [o for o in out.observations if o.ref != ref]
        plain = plain_observation(raw, wanted, memo)
        if plain is not None:
            out.observations.extend(plain)
        else:
            parsed_observation(raw, wanted, out)


def parsed_observation(raw: Mapping[str, Any], wanted: frozenset[str], out: Extracted) -> None:
    """The reference path: parse with the R4B model (repairing what it can), then flatten."""
    obs = _model(parse(raw), out, observation_kind(raw))
    if obs is None:
        return
    time = when(obs.effectiveDateTime) or when(obs.effectiveInstant) or (
        when(obs.effectivePeriod.start) if obs.effectivePeriod else None) or when(obs.issued)
    ref = f"Observation/{obs.id}" if obs.id else None
    codes = tuple(c.code for c in (obs.code.coding or []) if c.code and c.system in (LOINC, None))
    low = high = None
    ref_unit = None
    if obs.referenceRange:
        rr = obs.referenceRange[0]
        if rr.high is not None:
            high, ref_unit = _num(rr.high.value), rr.high.code or rr.high.unit
        if rr.low is not None:
            low = _num(rr.low.value)
    if obs.valueQuantity is not None or not obs.component:
        q = obs.valueQuantity
        value_codes: tuple[Coding, ...] = ()
        if obs.valueCodeableConcept is not None or set(codes) & load().culture_codes:  # coded results (cultures)
            value_codes = _codings(obs.valueCodeableConcept) + tuple(
                c for concept in (obs.interpretation or []) for c in _codings(concept))
        out.observations.append(ObservationInput(
            ref, obs.status, codes, _num(q.value) if q else None, (q.code or q.unit) if q else None,
            time, low, high, ref_unit, value_codes))
    for comp in obs.component or []:
        comp_codes = tuple(c.code for c in (comp.code.coding or []) if c.code and c.system in (LOINC, None))
        q = comp.valueQuantity
        if not (set(comp_codes) & wanted):
            continue
        out.observations.append(ObservationInput(
            ref, obs.status, comp_codes, _num(q.value) if q else None, (q.code or q.unit) if q else None, time))


# --- plain resources without the R4B model -------------------------------------------------------------
#
# Parsing one Observation with the R4B model costs ~140 us (a MedicationRequest ~170 us); a 7-day admission
# has ~200 relevant Observations. Most real resources are "plain": only the elements listed below, every
# value of the expected JSON type and plainly inside the FHIR rules. For those, plain_observation() and
# plain_medication_request() check every element against the rules the R4B model applies (the date and
# decimal patterns are fhir_core's own) and flatten the raw JSON directly. Anything not positively
# recognised - another element, an extension, an empty or null value, a string that is not plainly valid,
# a partial date, a leap second, a missing required element - returns None and takes the R4B path, so the
# records are always the ones the model would give. tests/test_bench_scenarios.py checks both paths
# against each other on the fixture library, Synthea records and mutations of them.

_ID = re.compile(r"[A-Za-z0-9\-.]{1,255}")  # fhir_core Id: ^[A-Za-z0-9\-.]+$, TYPES_ID_MAX_LENGTH 255
_CODE = re.compile(r"[!-~]+(?: [!-~]+)*")  # printable ASCII inside fhir_core Code: ^[^\s]+(\s[^\s]+)*$
_URI = re.compile(r"[!-~]+")  # non-empty printable ASCII inside fhir_core Uri/Canonical (\S*)
_PLAIN_DATETIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-5][0-9](?:\.[0-9]{1,6})?"
                             r"(?:Z|[+-][0-9]{2}:[0-9]{2})")  # full date-time, no leap second, <= 6 digits
_PLAIN_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_EXACT_FLOAT = 2**53
_INT32 = 2**31 - 1


class _Memo:
    """Per-call memory: element values already found valid, and date-times already read."""

    __slots__ = ("concepts", "contexts", "kept_concepts", "times", "values")

    def __init__(self) -> None:
        self.values: dict[str, list[Any]] = {}
        self.contexts: list[tuple[Any, ...]] = []  # (meta, category, subject, ...) tuples found valid
        self.times: dict[str, datetime | None] = {}
        # Observation.code values found valid and their LOINC codes, by (text, first code): one comparison
        # finds a repeated concept instead of one per concept seen (a record has a dozen or more)
        self.concepts: dict[tuple[Any, Any], list[tuple[Any, tuple[str, ...]]]] = {}
        self.kept_concepts = 0  # how many are remembered (at most 64)


def _ok_string(value: Any) -> bool:
    # fhir_core String: pattern [ \r\n\t\S]+ (a search), so any str with one non-whitespace character
    return type(value) is str and value != "" and not value.isspace()


def _ok_code(value: Any) -> bool:
    return type(value) is str and _CODE.fullmatch(value) is not None


def _ok_uri(value: Any) -> bool:
    return type(value) is str and _URI.fullmatch(value) is not None


def _ok_id(value: Any) -> bool:
    return type(value) is str and _ID.fullmatch(value) is not None


def _ok_decimal(value: Any) -> bool:
    if type(value) is float:
        return value - value == 0.0 and _FhirDecimal.pattern.fullmatch(str(value)) is not None  # finite
    return type(value) is int and -_EXACT_FLOAT <= value <= _EXACT_FLOAT


def _ok_positive_int(value: Any) -> bool:
    return type(value) is int and 1 <= value <= _INT32


def _ok_integer(value: Any) -> bool:
    return type(value) is int and -_INT32 - 1 <= value <= _INT32


def _ok_boolean(value: Any) -> bool:
    return type(value) is bool


def _plain_instant(value: Any) -> datetime | None:
    """A FHIR instant (full date-time with zone) as an aware UTC datetime; None if not plainly valid."""
    if type(value) is not str or _PLAIN_DATETIME.fullmatch(value) is None or (
            _FhirInstant.pattern.fullmatch(value) is None):
        return None
    try:
        return datetime.fromisoformat(value).astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def _plain_datetime(value: Any) -> datetime | None:
    """A FHIR dateTime that is a full date-time with zone, or a full date (read as midnight UTC, like
    :func:`when` reads the model's ``date``); None for partial dates and anything not plainly valid."""
    if type(value) is not str:
        return None
    if len(value) == 10:
        if _PLAIN_DATE.fullmatch(value) is None or _FhirDateTime.pattern.fullmatch(value) is None:
            return None
        try:
            day = date.fromisoformat(value)
        except ValueError:
            return None
        return datetime(day.year, day.month, day.day, tzinfo=UTC)
    if _PLAIN_DATETIME.fullmatch(value) is None or _FhirDateTime.pattern.fullmatch(value) is None:
        return None
    try:
        return datetime.fromisoformat(value).astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def _tidied_code(value: Any) -> str | None:
    """A code that is plain once stray whitespace around it is removed (``"Final "``), as the R4B path's
    :func:`~cds_service.fhir.models.tidy` reads it; None for anything else (it is not plain)."""
    if type(value) is not str or value.strip() == value:
        return None
    tidied = tidy_code(value)
    return tidied if _ok_code(tidied) and tidied == value.strip() else None


def _ok_datetime(value: Any) -> bool:
    return _plain_datetime(value) is not None


def _ok_instant(value: Any) -> bool:
    return _plain_instant(value) is not None


Check = Callable[[Any], bool]


def _element(checks: dict[str, Check], required: tuple[str, ...] = ()) -> Check:
    keys = frozenset(checks)

    def check(value: Any) -> bool:
        if type(value) is not dict or not value or not value.keys() <= keys:
            return False
        for name in required:
            if name not in value:
                return False
        for name, item in value.items():  # noqa: SIM110 - a plain loop: this is the hot path
            if not checks[name](item):
                return False
        return True

    return check


def _list_of(check: Check) -> Check:
    def check_list(value: Any) -> bool:
        return type(value) is list and bool(value) and all(map(check, value))

    return check_list


# Only str leaves below Coding/CodeableConcept/Reference/Meta (no userSelected boolean), so that a value
# equal (==) to one already checked is the same JSON and may skip the check (see _memo_ok).
_ok_coding = _element({"system": _ok_uri, "version": _ok_string, "code": _ok_code, "display": _ok_string})
_ok_concept = _element({"coding": _list_of(_ok_coding), "text": _ok_string})
_ok_concepts = _list_of(_ok_concept)
_ok_reference = _element({"reference": _ok_string, "type": _ok_uri, "display": _ok_string})
_ok_meta = _element({"versionId": _ok_id, "lastUpdated": _ok_instant, "source": _ok_uri,
                     "profile": _list_of(_ok_uri), "tag": _list_of(_ok_coding), "security": _list_of(_ok_coding)})
_QUANTITY_KEYS = frozenset({"value", "unit", "system", "code"})


_UNITS_SEEN: set[tuple[str, str, str]] = set()  # (unit, system, code) triples found valid: a pure, bounded cache


def _ok_quantity(value: Any) -> bool:
    if type(value) is not dict or not value or not value.keys() <= _QUANTITY_KEYS:
        return False
    if not _ok_decimal(value.get("value", 0)):
        return False
    unit, system, code = value.get("unit", "-"), value.get("system", "-"), value.get("code", "-")
    if type(unit) is not str or type(system) is not str or type(code) is not str:
        return False
    triple = (unit, system, code)
    if triple in _UNITS_SEEN:
        return True
    if not (_ok_string(unit) and _ok_uri(system) and _ok_code(code)):
        return False
    if len(_UNITS_SEEN) < 4096:
        _UNITS_SEEN.add(triple)
    return True


def _ok_range_numbers(value: dict[str, Any]) -> bool:
    """The decimals of a reference range already known equal (==) to a valid one: still of a valid type?"""
    for side in ("low", "high"):
        quantity = value.get(side)
        if quantity is not None and "value" in quantity and not _ok_decimal(quantity["value"]):
            return False
    return True


_ok_range = _element({"low": _ok_quantity, "high": _ok_quantity, "type": _ok_concept, "appliesTo": _ok_concepts,
                      "text": _ok_string})
_ok_ranges = _list_of(_ok_range)
_ok_period = _element({"start": _ok_datetime, "end": _ok_datetime})
_ok_repeat = _element({"boundsPeriod": _ok_period, "frequency": _ok_positive_int, "frequencyMax": _ok_positive_int,
                       "period": _ok_decimal, "periodMax": _ok_decimal, "periodUnit": _ok_code})
_ok_timing = _element({"repeat": _ok_repeat, "code": _ok_concept})
_ok_dose_and_rate = _element({"type": _ok_concept, "doseQuantity": _ok_quantity})
_ok_dosage = _element({"sequence": _ok_integer, "text": _ok_string, "additionalInstruction": _ok_concepts,
                       "patientInstruction": _ok_string, "timing": _ok_timing, "asNeededBoolean": _ok_boolean,
                       "site": _ok_concept, "route": _ok_concept, "method": _ok_concept,
                       "doseAndRate": _list_of(_ok_dose_and_rate)})
_ok_dispense = _element({"validityPeriod": _ok_period, "quantity": _ok_quantity})


def _memo_ok(name: str, value: Any, check: Check, memo: _Memo) -> bool:
    """``check(value)``, remembering str-only values found valid in this call (equal means identical)."""
    known = memo.values.get(name)
    if known is not None and value in known:
        return True
    if not check(value):
        return False
    if known is None:
        memo.values[name] = [value]
    elif len(known) < 16:
        known.append(value)
    return True


def _memo_datetime(value: Any, memo: _Memo) -> datetime | None:
    if type(value) is not str:
        return None
    try:
        return memo.times[value]
    except KeyError:
        parsed = memo.times[value] = _plain_datetime(value)
        return parsed


def _memo_ranges(value: Any, memo: _Memo) -> bool:
    known = memo.values.get("referenceRange")
    if known is not None and value in known:
        return all(map(_ok_range_numbers, value))
    if not _ok_ranges(value):
        return False
    if known is None:
        memo.values["referenceRange"] = [value]
    elif len(known) < 16:
        known.append(value)
    return True


_ok_references = _list_of(_ok_reference)
_PLAIN_OBSERVATION_KEYS = frozenset({
    "resourceType", "id", "meta", "status", "category", "code", "subject", "encounter", "performer",
    "effectiveDateTime", "issued", "valueQuantity", "interpretation", "referenceRange", "component"})
_ABSENT: Any = object()
_MEMO_CHECKS: tuple[tuple[str, Check], ...] = (
    ("meta", _ok_meta), ("category", _ok_concepts), ("subject", _ok_reference), ("encounter", _ok_reference),
    ("performer", _ok_references), ("interpretation", _ok_concepts))


def _concept_key(concept: Any) -> tuple[Any, Any]:
    """A cheap, hashable summary of a CodeableConcept: its text and first code (None where not a str)."""
    if type(concept) is not dict:
        return (None, None)
    text = concept.get("text")
    coding = concept.get("coding")
    first = coding[0] if type(coding) is list and coding and type(coding[0]) is dict else None
    code = first.get("code") if first is not None else None
    return (text if type(text) is str else None, code if type(code) is str else None)


def _memo_codes(concept: Any, memo: _Memo) -> tuple[str, ...] | None:
    """The LOINC codes of a valid CodeableConcept (None if invalid); equal concepts are checked once (their
    leaves are all str, so equal means the same JSON)."""
    key = _concept_key(concept)
    known = memo.concepts.get(key)
    if known is not None:
        for seen, codes in known:
            if seen == concept:
                return codes
    if not _ok_concept(concept):
        return None
    codes = _loinc_codes(concept)
    if memo.kept_concepts < 64:
        memo.kept_concepts += 1
        memo.concepts.setdefault(key, []).append((concept, codes))
    return codes


_COMPONENT_CHECKS: dict[str, Check] = {"valueQuantity": _ok_quantity, "interpretation": _ok_concepts,
                                       "referenceRange": _ok_ranges}
_COMPONENT_KEYS = frozenset({"code", *_COMPONENT_CHECKS})


def _plain_components(components: Any, memo: _Memo) -> list[tuple[str, ...]] | None:
    """The LOINC codes of each component, or None unless every component is plainly valid."""
    if type(components) is not list or not components:
        return None
    out = []
    for comp in components:
        if type(comp) is not dict or not comp.keys() <= _COMPONENT_KEYS:
            return None
        codes = _memo_codes(comp.get("code", _ABSENT), memo)
        if codes is None:
            return None
        for name, value in comp.items():
            if name != "code" and not _COMPONENT_CHECKS[name](value):
                return None
        out.append(codes)
    return out


def _q_value(quantity: Any) -> float | None:
    return _num(quantity.get("value")) if quantity else None


def _q_unit(quantity: Any) -> str | None:
    return (quantity.get("code") or quantity.get("unit")) if quantity else None


def _loinc_codes(concept: dict[str, Any]) -> tuple[str, ...]:
    return tuple(c["code"] for c in concept.get("coding") or () if c.get("code") and c.get("system") in
                 (LOINC, None))


def plain_observation(raw: Mapping[str, Any], wanted: frozenset[str], memo: _Memo | None = None
                      ) -> list[ObservationInput] | None:
    """The records :func:`parsed_observation` would produce for ``raw``, or None when ``raw`` is not plain."""
    if type(raw) is not dict or raw.get("resourceType") != "Observation" or not raw.keys() <= (
            _PLAIN_OBSERVATION_KEYS):
        return None
    memo = memo if memo is not None else _Memo()
    get = raw.get
    known_values = memo.values
    # Each element once, by name: absent is fine (except the required status and code), null never is.
    status = get("status")
    if not _ok_code(status):
        status = _tidied_code(status)
        if status is None:
            return None
    codes = _memo_codes(get("code", _ABSENT), memo)
    if codes is None:
        return None
    # The str-only elements together: in a record they repeat, so one comparison of the tuple usually
    # finds them all checked already (equal str-only JSON is the same JSON).
    context = (get("meta", _ABSENT), get("category", _ABSENT), get("subject", _ABSENT), get("encounter", _ABSENT),
               get("performer", _ABSENT), get("interpretation", _ABSENT))
    if context not in memo.contexts:
        for (name, check), value in zip(_MEMO_CHECKS, context, strict=True):
            if value is _ABSENT:
                continue
            known = known_values.get(name)
            if known is not None and value in known:
                continue
            if not check(value):
                return None
            if known is None:
                known_values[name] = [value]
            elif len(known) < 16:
                known.append(value)
        if len(memo.contexts) < 16:
            memo.contexts.append(context)
    value = get("id", _ABSENT)
    if value is not _ABSENT and not _ok_id(value):
        return None
    time = None
    value = get("effectiveDateTime", _ABSENT)
    if value is not _ABSENT and (time := _memo_datetime(value, memo)) is None:
        return None
    value = get("issued", _ABSENT)
    if value is not _ABSENT:
        issued = _plain_instant(value)
        if issued is None:
            return None
        time = time or issued
    quantity = get("valueQuantity", _ABSENT)
    if quantity is not _ABSENT and not _ok_quantity(quantity):
        return None
    ranges = get("referenceRange", _ABSENT)
    if ranges is not _ABSENT and not _memo_ranges(ranges, memo):
        return None
    components = get("component", _ABSENT)
    component_codes: list[tuple[str, ...]] = []
    if components is not _ABSENT:
        checked = _plain_components(components, memo)
        if checked is None:
            return None
        component_codes = checked
    # Flatten as parsed_observation() does; the checks above make _num(x) == float(x) for present values.
    ident = get("id")
    ref = f"Observation/{ident}" if ident else None
    low = high = None
    ref_unit = None
    if ranges is not _ABSENT:
        rr = ranges[0]
        bound = rr.get("high")
        if bound is not None:
            number = bound.get("value")
            high = None if number is None else float(number)
            ref_unit = bound.get("code") or bound.get("unit")
        bound = rr.get("low")
        if bound is not None:
            number = bound.get("value")
            low = None if number is None else float(number)
    records: list[ObservationInput] = []
    if quantity is not _ABSENT or components is _ABSENT:
        if quantity is _ABSENT:
            records.append(ObservationInput(ref, status, codes, None, None, time, low, high, ref_unit))
        else:
            number = quantity.get("value")
            records.append(ObservationInput(
                ref, status, codes, None if number is None else float(number),
                quantity.get("code") or quantity.get("unit"), time, low, high, ref_unit))
    for comp, comp_codes in zip(components if components is not _ABSENT else (), component_codes, strict=True):
        if not (set(comp_codes) & wanted):
            continue
        q = comp.get("valueQuantity")
        records.append(ObservationInput(ref, status, comp_codes, _q_value(q), _q_unit(q), time))
    return records


_PLAIN_MEDICATION_REQUEST: dict[str, Check] = {
    "resourceType": lambda value: value == "MedicationRequest",
    "id": _ok_id,
    "meta": _ok_meta,
    "status": _ok_code,
    "intent": _ok_code,
    "category": _ok_concepts,
    "priority": _ok_code,
    "medicationCodeableConcept": _ok_concept,
    "subject": _ok_reference,
    "encounter": _ok_reference,
    "requester": _ok_reference,
    "authoredOn": _ok_datetime,
    "doNotPerform": _ok_boolean,
    "dosageInstruction": _list_of(_ok_dosage),
    "dispenseRequest": _ok_dispense,
}
_PLAIN_MEDICATION_REQUEST_KEYS = frozenset(_PLAIN_MEDICATION_REQUEST)
_MR_REQUIRED = ("resourceType", "status", "intent", "subject", "medicationCodeableConcept")


def _raw_codings(concept: Any) -> tuple[Coding, ...]:
    if concept is None:
        return ()
    return tuple(Coding(c.get("system"), c.get("code"), c.get("display")) for c in concept.get("coding") or ())


def plain_medication_request(raw: Mapping[str, Any], *, is_draft: bool) -> MedicationInput | None:
    """What :func:`medication_request` gives for ``raw``, or None when ``raw`` is not plain.

    A plain order names its drug by ``medicationCodeableConcept`` and has every required element, so the
    defaults for draft orders and the Medication lookups of the R4B path never apply to it.
    """
    if type(raw) is not dict or not raw.keys() <= _PLAIN_MEDICATION_REQUEST_KEYS:
        return None
    for name in _MR_REQUIRED:
        if name not in raw:
            return None
    tidied: dict[str, str] = {}
    for name, value in raw.items():
        if not _PLAIN_MEDICATION_REQUEST[name](value):
            code = _tidied_code(value) if name in ("status", "intent") else None
            if code is None:
                return None
            tidied[name] = code
    concept = raw["medicationCodeableConcept"]
    codings = _raw_codings(concept)
    names: list[str] = [concept["text"]] if concept.get("text") else []
    names.extend(c["display"] for c in concept.get("coding") or () if c.get("display"))
    instructions = raw.get("dosageInstruction")
    dosage = instructions[0] if instructions else None
    route = dosage.get("route") if dosage is not None else None
    dose_value = dose_unit = None
    dispense = raw.get("dispenseRequest")
    validity = dispense.get("validityPeriod") if dispense else None
    ended = _plain_datetime(validity.get("end")) if validity else None
    if dosage is not None:
        rates = dosage.get("doseAndRate")
        if rates and "doseQuantity" in rates[0]:
            dq = rates[0]["doseQuantity"]
            dose_value, dose_unit = _num(dq.get("value")), dq.get("code") or dq.get("unit")
        timing = dosage.get("timing")
        repeat = timing.get("repeat") if timing else None
        bounds = repeat.get("boundsPeriod") if repeat else None
        if bounds is not None and "end" in bounds:
            ended = ended or _plain_datetime(bounds["end"])
    ident = raw.get("id")
    return MedicationInput(
        ref=f"MedicationRequest/{ident}" if ident else None,
        is_draft=is_draft,
        status=tidied.get("status", raw["status"]),
        codings=codings,
        names=tuple(dict.fromkeys(n for n in names if n)),
        route=_raw_codings(route),
        route_text=route.get("text") if route is not None else None,
        authored=_plain_datetime(raw.get("authoredOn")),
        ended=ended,
        dose_value=dose_value,
        dose_unit=dose_unit,
        do_not_perform=raw.get("doNotPerform") is True,
    )


def _medication_names(med: Any) -> tuple[tuple[Coding, ...], list[str]]:
    return _codings(med.code), _texts(med.code)


def medication_request(raw: Mapping[str, Any], *, is_draft: bool, patient_id: str | None,
                       medications: Mapping[str, Any], out: Extracted) -> MedicationInput | None:
    plain = plain_medication_request(raw, is_draft=is_draft)
    if plain is not None:
        return plain
    return parsed_medication_request(raw, is_draft=is_draft, patient_id=patient_id, medications=medications,
                                     out=out)


def parsed_medication_request(raw: Mapping[str, Any], *, is_draft: bool, patient_id: str | None,
                              medications: Mapping[str, Any], out: Extracted) -> MedicationInput | None:
    """The reference path: parse with the R4B model (defaults and repairs), then flatten."""
    defaults: dict[str, Any] = {"intent": "order"}
    if is_draft:
        defaults["status"] = "draft"
    if patient_id:
        defaults["subject"] = {"reference": f"Patient/{patient_id}"}
    mr = _model(parse(raw, defaults), out, "draft-order" if is_draft else "medication")
    if mr is None:
        return None
    codings, names = _medication_concept(mr, medications)
    dosage = (mr.dosageInstruction or [None])[0]
    ended = when(mr.dispenseRequest.validityPeriod.end) if (
        mr.dispenseRequest and mr.dispenseRequest.validityPeriod) else None
    if dosage is not None:
        bounds = dosage.timing.repeat.boundsPeriod if (dosage.timing and dosage.timing.repeat) else None
        if bounds is not None and bounds.end is not None:
            ended = ended or when(bounds.end)
    return _from_model(mr, "request", is_draft=is_draft, codings=codings, names=names, dosage=dosage,
                       authored=when(mr.authoredOn), ended=ended, dose=_dose_quantity(dosage))


def _dose_quantity(dosage: Any) -> tuple[float | None, str | None]:
    """(value, unit) of a Dosage's first ``doseAndRate.doseQuantity``; (None, None) without one."""
    if dosage is not None and dosage.doseAndRate and dosage.doseAndRate[0].doseQuantity is not None:
        dq = dosage.doseAndRate[0].doseQuantity
        return _num(dq.value), dq.code or dq.unit
    return None, None


_RESOURCE_OF_KIND = {"request": "MedicationRequest", "administration": "MedicationAdministration",
                     "statement": "MedicationStatement"}


def _from_model(model: Any, kind: MedicationKind, *, is_draft: bool, codings: tuple[Coding, ...], names: list[str],
                dosage: Any, authored: datetime | None, ended: datetime | None,
                dose: tuple[float | None, str | None]) -> MedicationInput:
    """The record of a parsed (R4B) order, administration or statement; ``dosage`` gives the route."""
    route = dosage.route if dosage is not None else None
    return MedicationInput(
        ref=f"{_RESOURCE_OF_KIND[kind]}/{model.id}" if model.id else None,
        is_draft=is_draft,
        status=model.status,
        codings=codings,
        names=tuple(dict.fromkeys(n for n in names if n)),
        route=_codings(route),
        route_text=route.text if route is not None else None,
        authored=authored,
        ended=ended,
        dose_value=dose[0],
        dose_unit=dose[1],
        kind=kind,
        do_not_perform=getattr(model, "doNotPerform", None) is True,  # a prohibition: never exposure
    )


def _medication_concept(model: Any, medications: Mapping[str, Any]) -> tuple[tuple[Coding, ...], list[str]]:
    """Codings and names of ``medicationCodeableConcept`` or of the Medication ``medicationReference`` points to
    (contained, or given in ``medications`` by "Medication/<id>")."""
    if getattr(model, "medicationCodeableConcept", None) is not None:
        return _codings(model.medicationCodeableConcept), _texts(model.medicationCodeableConcept)
    codings: tuple[Coding, ...] = ()
    names: list[str] = []
    reference_element = getattr(model, "medicationReference", None)
    if reference_element is not None:
        reference = reference_element.reference or ""
        target: Any = None
        if reference.startswith("#"):
            target = next((c for c in (model.contained or []) if getattr(c, "id", None) == reference[1:]), None)
        elif reference:
            found = medications.get(reference.split("/_history")[0])
            target = parse(found).model if found else None
        if target is not None and getattr(target, "code", None) is not None:
            codings, names = _medication_names(target)
        if reference_element.display:
            names.append(reference_element.display)
    return codings, names


def _effective(resource: Any) -> tuple[datetime | None, datetime | None]:
    """``effective[x]`` of an administration or statement: (start, end); a dateTime is a start only."""
    start = when(resource.effectiveDateTime)
    end = None
    if resource.effectivePeriod is not None:
        start = start or when(resource.effectivePeriod.start)
        end = when(resource.effectivePeriod.end)
    return start, end


def medication_administration(raw: Mapping[str, Any], *, medications: Mapping[str, Any],
                              out: Extracted) -> MedicationInput | None:
    """A dose given: ``effective[x]`` is when (start and end of an infusion); the status decides whether it
    counts (the rules drop ``not-done`` and ``entered-in-error``)."""
    ma = _model(parse(raw), out, "medication")
    if ma is None:
        return None
    codings, names = _medication_concept(ma, medications)
    start, end = _effective(ma)
    dose = ma.dosage.dose if ma.dosage is not None else None
    return _from_model(ma, "administration", is_draft=False, codings=codings, names=names, dosage=ma.dosage,
                       authored=start, ended=end or start,
                       dose=(_num(dose.value), dose.code or dose.unit) if dose is not None else (None, None))


def medication_statement(raw: Mapping[str, Any], *, medications: Mapping[str, Any],
                         out: Extracted) -> MedicationInput | None:
    """Home or reported medication: ``effective[x]`` (period or date), else ``dateAsserted``, is when."""
    ms = _model(parse(raw), out, "medication")
    if ms is None:
        return None
    codings, names = _medication_concept(ms, medications)
    start, end = _effective(ms)
    if start is None and end is None:
        start = when(ms.dateAsserted)
    dosage = (ms.dosage or [None])[0]
    return _from_model(ms, "statement", is_draft=False, codings=codings, names=names, dosage=dosage,
                       authored=start, ended=end, dose=_dose_quantity(dosage))


@dataclass
class ExposureRecords:
    """The raw exposure records of the gathered keys, by kind, and the Medications they may reference."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    administrations: list[dict[str, Any]] = field(default_factory=list)
    statements: list[dict[str, Any]] = field(default_factory=list)
    medications: dict[str, Any] = field(default_factory=dict)  # "Medication/<id>" -> resource
    duplicates: int = 0  # older versions (or differing repeats) of one order, dose or statement: not used

    def all(self) -> list[dict[str, Any]]:
        return self.requests + self.administrations + self.statements


_EXPOSURE_TYPES = {"MedicationRequest": "requests", "MedicationAdministration": "administrations",
                   "MedicationStatement": "statements"}


def exposure_records(data: Mapping[str, Any]) -> ExposureRecords:
    """Sort the resources of the medication keys (``medications``, ``administrations``, ``statements``, any
    that the hook's templates have) by kind; ``data`` maps key -> an object with ``resources``."""
    out = ExposureRecords()
    items = [data.get(key) for key in ("medications", "administrations", "statements")]
    listed = [raw for item in items if item is not None for raw in item.resources]
    seen = Extracted()
    for raw in newest(listed, seen):
        kind = raw.get("resourceType")
        if kind == "Medication":
            out.medications[f"Medication/{raw.get('id')}"] = raw
        elif kind in _EXPOSURE_TYPES:
            getattr(out, _EXPOSURE_TYPES[kind]).append(raw)
    out.duplicates = seen.duplicates
    return out


def _names_a_known_drug(raw: Mapping[str, Any]) -> bool:
    """Whether a record's ``medicationCodeableConcept`` names a drug any rule reads (exposure, withdrawal,
    lithium, other causes); a reference, or anything unusual, is parsed to find out. The rules ignore every other
    drug, so a long record of unrelated doses costs a dictionary look-up per dose instead of a model parse."""
    if "medicationCodeableConcept" not in raw:
        return True
    concept = raw["medicationCodeableConcept"]
    if not isinstance(concept, dict):
        return True
    vs = load()
    texts: list[str] = [concept["text"]] if isinstance(concept.get("text"), str) else []
    for coding in concept.get("coding") or []:
        if not isinstance(coding, dict):
            return True
        system, code = coding.get("system"), coding.get("code")
        if isinstance(code, str) and (
                (system in (RXNORM, None) and vs.drug(code.strip()) is not None)
                or vs.atc(system, code.strip()) is not None or vs.other_drug(system, code.strip()) is not None):
            return True
        if isinstance(coding.get("display"), str):
            texts.append(coding["display"])
    return any(vs.match_drug_name(t) is not None or vs.match_other_drug(t) for t in texts)


def administrations_and_statements(given: Iterable[Mapping[str, Any]], stated: Iterable[Mapping[str, Any]],
                                   medications: Mapping[str, Any], out: Extracted) -> None:
    """MedicationAdministration and MedicationStatement records into ``out.medications`` (any hook's service);
    records of drugs no rule reads are skipped before parsing."""
    for raw in given:
        if _names_a_known_drug(raw):
            med = medication_administration(raw, medications=medications, out=out)
            if med is not None:
                out.medications.append(med)
    for raw in stated:
        if _names_a_known_drug(raw):
            med = medication_statement(raw, medications=medications, out=out)
            if med is not None:
                out.medications.append(med)


def history(resources: Iterable[Mapping[str, Any]], out: Extracted) -> None:
    for raw in newest([r for r in resources if r.get("resourceType") in ("Condition", "AllergyIntolerance")], out):
        kind = raw.get("resourceType")
        model = _model(parse(raw), out, "condition" if kind == "Condition" else "allergy")
        if model is None:
            continue
        codings = list(_codings(model.code))
        texts = _texts(model.code)
        if kind == "AllergyIntolerance":
            for reaction in model.reaction or []:
                for manifestation in reaction.manifestation or []:
                    codings.extend(_codings(manifestation))
                    texts.extend(_texts(manifestation))
        verification = None
        if model.verificationStatus is not None and model.verificationStatus.coding:
            verification = model.verificationStatus.coding[0].code
        recorded = when(getattr(model, "recordedDate", None)) or when(getattr(model, "onsetDateTime", None))
        status = model.clinicalStatus.coding[0].code if (
            model.clinicalStatus is not None and model.clinicalStatus.coding) else None
        abated = when(getattr(model, "abatementDateTime", None))
        if abated is None and getattr(model, "abatementPeriod", None) is not None:
            abated = when(model.abatementPeriod.end)
        out.history.append(HistoryInput(
            "condition" if kind == "Condition" else "allergy", tuple(codings), "; ".join(texts) or None,
            recorded, verification, f"{kind}/{model.id}" if model.id else None, status, abated))


def patient_sex(resources: Iterable[Mapping[str, Any]]) -> str | None:
    for raw in resources:
        if raw.get("resourceType") == "Patient":
            gender = raw.get("gender")
            return gender if gender in ("male", "female") else None
    return None
