"""Observations (vital signs, labs, cultures) into the clinical core's reading records.

A relevant Observation that is plain (:func:`cds_service.fhir.plain_json.plain_observation`) is flattened
straight from its JSON; any other goes through the R4B model (:func:`parsed_observation`), whose answer the
plain path reproduces exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from cds_service.clinical.model import Coding, ObservationInput
from cds_service.clinical.rules import LAB_CONCEPTS, VITAL_CONCEPTS
from cds_service.clinical.site import SiteKnowledge
from cds_service.clinical.valuesets import LOINC, active, load
from cds_service.fhir.extract import Extracted, codings_of, number_of, read_model, site_keys, when
from cds_service.fhir.models import parse
from cds_service.fhir.plain_json import plain_observation
from cds_service.fhir.plain_types import Memo
from cds_service.fhir.versions import first_listing

# The kind of a relevant Observation counted when unreadable (one of extract.UNREAD_KINDS).
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



def relevant_loinc() -> frozenset[str]:
    """The codes of the Observations the rules read, in the knowledge in effect: LOINC codes, and for a site
    code map its code, its ``system|code`` and its key (:func:`has_code` and the component filter use them)."""
    return _relevant(active())


@lru_cache(maxsize=16)
def _relevant(site: SiteKnowledge | None) -> frozenset[str]:
    vs = load(site)
    wanted = set(VITAL_CONCEPTS) | set(LAB_CONCEPTS) | {"bp-panel"}
    mapped = {part for entries in vs.site_codes.values() for e in entries
              for part in (e.code, f"{e.system}|{e.code}", e.key)}
    return frozenset({code for code, c in vs.observations_by_code.items() if c.concept in wanted}
                     | vs.culture_codes | mapped)


def has_code(resource: Mapping[str, Any], wanted: frozenset[str]) -> bool:
    """Whether a LOINC (or system-less) coding of ``resource.code`` is one of ``wanted`` (runs on every
    Observation of the record, so no set is built)."""
    concept = resource.get("code")
    if isinstance(concept, dict):
        for coding in concept.get("coding") or ():
            if isinstance(coding, dict):
                code = coding.get("code")  # the code first: in a long record most are not wanted
                if isinstance(code, str) and code in wanted and (
                        coding.get("system") in (LOINC, None) or f"{coding.get('system')}|{code}" in wanted):
                    return True
    return False



def observations(resources: Iterable[Mapping[str, Any]], out: Extracted) -> None:
    """The relevant Observations of ``resources`` into ``out.observations``; one per id across calls (the
    newest version: see :func:`.versions.first_listing`)."""
    wanted = relevant_loinc()
    memo = Memo()
    # one comprehension over the record (a long one is mostly other codes), then the work on what is left
    for raw in [r for r in resources if r.get("resourceType") == "Observation" and has_code(r, wanted)]:
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
    obs = read_model(parse(raw), out, observation_kind(raw))
    if obs is None:
        return
    time = when(obs.effectiveDateTime) or when(obs.effectiveInstant) or (
        when(obs.effectivePeriod.start) if obs.effectivePeriod else None) or when(obs.issued)
    ref = f"Observation/{obs.id}" if obs.id else None
    codes = tuple(c.code for c in (obs.code.coding or []) if c.code and c.system in (LOINC, None)) + _site_keys(
        obs.code)
    low = high = None
    ref_unit = None
    if obs.referenceRange:
        rr = obs.referenceRange[0]
        if rr.high is not None:
            high, ref_unit = number_of(rr.high.value), rr.high.code or rr.high.unit
        if rr.low is not None:
            low = number_of(rr.low.value)
    if obs.valueQuantity is not None or not obs.component:
        q = obs.valueQuantity
        value_codes: tuple[Coding, ...] = ()
        if obs.valueCodeableConcept is not None or set(codes) & load().culture_codes:  # coded results (cultures)
            value_codes = codings_of(obs.valueCodeableConcept) + tuple(
                c for concept in (obs.interpretation or []) for c in codings_of(concept))
        out.observations.append(ObservationInput(
            ref, obs.status, codes, number_of(q.value) if q else None, (q.code or q.unit) if q else None,
            time, low, high, ref_unit, value_codes))
    for comp in obs.component or []:
        comp_codes = tuple(c.code for c in (comp.code.coding or []) if c.code and c.system in (LOINC, None)
                           ) + _site_keys(comp.code)
        q = comp.valueQuantity
        if not (set(comp_codes) & wanted):
            continue
        out.observations.append(ObservationInput(
            ref, obs.status, comp_codes, number_of(q.value) if q else None, (q.code or q.unit) if q else None, time))



def _site_keys(concept: Any) -> tuple[str, ...]:
    """:func:`.extract.site_keys` of a parsed CodeableConcept (the plain path reads the same from JSON)."""
    return site_keys(concept.text, [(c.system, c.code, c.display) for c in (concept.coding or [])])
