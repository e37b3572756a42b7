"""The plain-JSON fast path: FHIR resources checked and flattened without the R4B model.

Parsing one Observation with the R4B model costs ~140 us (a MedicationRequest ~170 us); a 7-day admission
has ~200 relevant Observations. Most real resources are "plain": only the elements listed below, every
value of the expected JSON type and plainly inside the FHIR rules. For those, plain_observation() and
plain_medication_request() check every element against the rules the R4B model applies (the datatype
checks, with fhir_core's own date and decimal patterns, are :mod:`cds_service.fhir.plain_types`) and flatten
the raw JSON directly. Anything not positively recognised - another element, an extension, an empty or null
value, a string that is not plainly valid, a partial date, a leap second, a missing required element -
returns None and takes the R4B path, so the records are always the ones the model would give.
tests/fhir/test_plain_json.py checks the fast path element by element; tests/scenarios/test_bench_scenarios.py
checks both paths against each other on the fixture library, Synthea records and mutations of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cds_service.clinical.model import Coding, MedicationInput, ObservationInput
from cds_service.clinical.valuesets import LOINC
from cds_service.fhir.extract import json_site_keys, number_of
from cds_service.fhir.plain_types import (
    Check,
    Memo,
    list_of,
    memo_datetime,
    memo_ranges,
    ok_boolean,
    ok_code,
    ok_concept,
    ok_concepts,
    ok_datetime,
    ok_dispense,
    ok_dosage,
    ok_id,
    ok_meta,
    ok_quantity,
    ok_ranges,
    ok_reference,
    plain_datetime,
    plain_instant,
    tidied_code,
)

_ok_references = list_of(ok_reference)
_PLAIN_OBSERVATION_KEYS = frozenset({
    "resourceType", "id", "meta", "status", "category", "code", "subject", "encounter", "performer",
    "effectiveDateTime", "issued", "valueQuantity", "interpretation", "referenceRange", "component"})
_ABSENT: Any = object()
_MEMO_CHECKS: tuple[tuple[str, Check], ...] = (
    ("meta", ok_meta), ("category", ok_concepts), ("subject", ok_reference), ("encounter", ok_reference),
    ("performer", _ok_references), ("interpretation", ok_concepts))


def _concept_key(concept: Any) -> tuple[Any, Any]:
    """A cheap, hashable summary of a CodeableConcept: its text and first code (None where not a str)."""
    if type(concept) is not dict:
        return (None, None)
    text = concept.get("text")
    coding = concept.get("coding")
    first = coding[0] if type(coding) is list and coding and type(coding[0]) is dict else None
    code = first.get("code") if first is not None else None
    return (text if type(text) is str else None, code if type(code) is str else None)


def _memo_codes(concept: Any, memo: Memo) -> tuple[str, ...] | None:
    """The LOINC codes of a valid CodeableConcept (None if invalid); equal concepts are checked once (their
    leaves are all str, so equal means the same JSON)."""
    key = _concept_key(concept)
    known = memo.concepts.get(key)
    if known is not None:
        for seen, codes in known:
            if seen == concept:
                return codes
    if not ok_concept(concept):
        return None
    codes = _loinc_codes(concept)
    if memo.kept_concepts < 64:
        memo.kept_concepts += 1
        memo.concepts.setdefault(key, []).append((concept, codes))
    return codes


_COMPONENT_CHECKS: dict[str, Check] = {"valueQuantity": ok_quantity, "interpretation": ok_concepts,
                                       "referenceRange": ok_ranges}
_COMPONENT_KEYS = frozenset({"code", *_COMPONENT_CHECKS})


def _plain_components(components: Any, memo: Memo) -> list[tuple[str, ...]] | None:
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
    return number_of(quantity.get("value")) if quantity else None


def _q_unit(quantity: Any) -> str | None:
    return (quantity.get("code") or quantity.get("unit")) if quantity else None


def _loinc_codes(concept: dict[str, Any]) -> tuple[str, ...]:
    """The LOINC codes of a CodeableConcept, then the keys of the site code maps it matches."""
    return tuple(c["code"] for c in concept.get("coding") or () if c.get("code") and c.get("system") in
                 (LOINC, None)) + json_site_keys(concept)


def plain_observation(raw: Mapping[str, Any], wanted: frozenset[str], memo: Memo | None = None
                      ) -> list[ObservationInput] | None:
    """The records :func:`.observations.parsed_observation` would produce for ``raw``, or None when ``raw`` is not
    plain."""
    if type(raw) is not dict or raw.get("resourceType") != "Observation" or not raw.keys() <= (
            _PLAIN_OBSERVATION_KEYS):
        return None
    memo = memo if memo is not None else Memo()
    get = raw.get
    known_values = memo.values
    # Each element once, by name: absent is fine (except the required status and code), null never is.
    status = get("status")
    if not ok_code(status):
        status = tidied_code(status)
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
    if value is not _ABSENT and not ok_id(value):
        return None
    time = None
    value = get("effectiveDateTime", _ABSENT)
    if value is not _ABSENT and (time := memo_datetime(value, memo)) is None:
        return None
    value = get("issued", _ABSENT)
    if value is not _ABSENT:
        issued = plain_instant(value)
        if issued is None:
            return None
        time = time or issued
    quantity = get("valueQuantity", _ABSENT)
    if quantity is not _ABSENT and not ok_quantity(quantity):
        return None
    ranges = get("referenceRange", _ABSENT)
    if ranges is not _ABSENT and not memo_ranges(ranges, memo):
        return None
    components = get("component", _ABSENT)
    component_codes: list[tuple[str, ...]] = []
    if components is not _ABSENT:
        checked = _plain_components(components, memo)
        if checked is None:
            return None
        component_codes = checked
    # Flatten as parsed_observation() does; the checks above make number_of(x) == float(x) for present values.
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
    "id": ok_id,
    "meta": ok_meta,
    "status": ok_code,
    "intent": ok_code,
    "category": ok_concepts,
    "priority": ok_code,
    "medicationCodeableConcept": ok_concept,
    "subject": ok_reference,
    "encounter": ok_reference,
    "requester": ok_reference,
    "authoredOn": ok_datetime,
    "doNotPerform": ok_boolean,
    "dosageInstruction": list_of(ok_dosage),
    "dispenseRequest": ok_dispense,
}
_PLAIN_MEDICATION_REQUEST_KEYS = frozenset(_PLAIN_MEDICATION_REQUEST)
_MR_REQUIRED = ("resourceType", "status", "intent", "subject", "medicationCodeableConcept")


def _raw_codings(concept: Any) -> tuple[Coding, ...]:
    if concept is None:
        return ()
    return tuple(Coding(c.get("system"), c.get("code"), c.get("display")) for c in concept.get("coding") or ())


def plain_medication_request(raw: Mapping[str, Any], *, is_draft: bool) -> MedicationInput | None:
    """What :func:`.medications.parsed_medication_request` gives for ``raw``, or None when ``raw`` is not plain.

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
            code = tidied_code(value) if name in ("status", "intent") else None
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
    ended = plain_datetime(validity.get("end")) if validity else None
    if dosage is not None:
        rates = dosage.get("doseAndRate")
        if rates and "doseQuantity" in rates[0]:
            dq = rates[0]["doseQuantity"]
            dose_value, dose_unit = number_of(dq.get("value")), dq.get("code") or dq.get("unit")
        timing = dosage.get("timing")
        repeat = timing.get("repeat") if timing else None
        bounds = repeat.get("boundsPeriod") if repeat else None
        if bounds is not None and "end" in bounds:
            ended = ended or plain_datetime(bounds["end"])
    ident = raw.get("id")
    return MedicationInput(
        ref=f"MedicationRequest/{ident}" if ident else None,
        is_draft=is_draft,
        status=tidied.get("status", raw["status"]),
        codings=codings,
        names=tuple(dict.fromkeys(n for n in names if n)),
        route=_raw_codings(route),
        route_text=route.get("text") if route is not None else None,
        authored=plain_datetime(raw.get("authoredOn")),
        ended=ended,
        dose_value=dose_value,
        dose_unit=dose_unit,
        do_not_perform=raw.get("doNotPerform") is True,
    )


