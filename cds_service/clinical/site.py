"""A site's knowledge on top of the packaged defaults: threshold overrides, value-set additions and removals, and
local code maps. Plain data in (:class:`SiteKnowledge`, validated by the caller), a :class:`ValueSets` out.

The value sets are named ``<table>:<concept>`` (:func:`tables`): one name per concept, class or group of the
tables the rules read, so that a site edit, the export as FHIR ValueSets and the parity test all speak of the
same sets. Nothing here reads a file, the clock or the environment.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from cds_service.clinical.criteria import LAB_CONCEPTS, VITAL_CONCEPTS
from cds_service.clinical.valuesets import ATC, LOINC, RXNORM, ValueSets
from cds_service.clinical.valuesets_load import CodeMap as CodeMap
from cds_service.clinical.valuesets_load import (
    ConditionConcept,
    DrugConcept,
    ObservationConcept,
    OtherDrug,
)

# The tables a value set may live in, and what a member of each is keyed by.
TABLES = ("observation", "condition", "cause", "route", "culture-result", "drug", "atc", "other-drug")
# Concepts a local code may be mapped to: what the rules read as a number (docs/site-file.md).
MAPPABLE = frozenset({*VITAL_CONCEPTS, *LAB_CONCEPTS, "bp-panel"}) - {"blood-culture"}


@dataclass(frozen=True)
class Member:
    """One code of a value set; ``prefix``: a code that stands for every code under it (ICD-10 categories)."""

    system: str
    code: str
    display: str = ""
    prefix: bool = False


@dataclass(frozen=True)
class Edit:
    """Add a code to, or remove one from, the value set ``valueset`` (``<table>:<concept>``)."""

    valueset: str
    op: Literal["add", "remove"]
    system: str
    code: str
    display: str = ""
    ingredient: str = ""  # drug and other-drug additions: the ingredient the code is a product of


@dataclass(frozen=True)
class SiteKnowledge:
    """What a site file changes (hashable: :func:`cds_service.clinical.valuesets.load` caches by it).
    ``version``: the knowledge version cards, audit rows and metrics carry."""

    version: str
    thresholds: tuple[tuple[str, str, float], ...] = ()  # (section, key, value)
    edits: tuple[Edit, ...] = ()
    code_maps: tuple[CodeMap, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not (self.thresholds or self.edits or self.code_maps)

    def __hash__(self) -> int:
        # computed once: the caches keyed by the knowledge look it up for every Observation code list
        cached: int | None = self.__dict__.get("_hash")
        if cached is None:
            cached = hash((self.version, self.thresholds, self.edits, self.code_maps))
            object.__setattr__(self, "_hash", cached)
        return cached

    def apply(self, base: ValueSets) -> ValueSets:
        return apply(base, self)


# --- the value sets the rules read, by name ----------------------------------------------------------


def tables(vs: ValueSets) -> dict[str, list[Member]]:
    """Every value set the rules read, ``<table>:<concept>`` -> its codes, in table order."""
    out: dict[str, list[Member]] = {}

    def put(name: str, member: Member) -> None:
        out.setdefault(name, []).append(member)

    for code, obs in vs.observations_by_code.items():
        if "|" not in code:  # site code maps are listed by code_maps(), not as LOINC members
            put(f"observation:{obs.concept}", Member(LOINC, code, obs.display))
    for entries in vs.site_codes.values():
        for entry in entries:
            put(f"observation:{entry.concept}", Member(entry.system, entry.code, entry.display))
    for code in sorted(vs.culture_codes):
        if code not in vs.observations_by_code:
            put("observation:blood-culture", Member(LOINC, code))
    for (system, code), kind in vs.culture_results.items():
        put(f"culture-result:{kind}", Member(system, code))
    for (system, code), cond in vs.conditions.items():
        put(f"condition:{cond.concept}", Member(system, code, cond.display))
    for (system, code), group in vs.cause_conditions.items():
        put(f"cause:{group}", Member(system, code))
    for system, prefix, group in vs.cause_prefixes:
        put(f"cause:{group}", Member(system, prefix, prefix=True))
    for (system, code), route in vs.routes.items():
        put(f"route:{route}", Member(system, code))
    for code, drug in vs.drugs_by_code.items():
        put(f"drug:{drug.drug_class}", Member(RXNORM, code, drug.display))
    for code, drug in vs.drugs_by_atc.items():
        put(f"atc:{drug.drug_class}", Member(ATC, code, drug.display))
    for (system, code), other in vs.other_drugs.items():
        for group in sorted(other.groups):
            put(f"other-drug:{group}", Member(system, code, other.ingredient))
    return out


# --- applying a site's knowledge -------------------------------------------------------------------------


def apply(base: ValueSets, site: SiteKnowledge) -> ValueSets:
    """``base`` with ``site``'s thresholds, edits and code maps (each validated by the caller: an unknown
    value set, section or concept here is a programming error and raises KeyError or ValueError)."""
    thresholds = copy.deepcopy(base.thresholds)
    for section, key, value in site.thresholds:
        if key not in thresholds[section]:
            raise KeyError(f"{section}.{key}")
        thresholds[section][key] = value
    vs = replace(base, thresholds=thresholds, observations_by_code=dict(base.observations_by_code),
                 codes_by_concept=dict(base.codes_by_concept), conditions=dict(base.conditions),
                 cause_conditions=dict(base.cause_conditions), routes=dict(base.routes),
                 culture_results=dict(base.culture_results), drugs_by_code=dict(base.drugs_by_code),
                 drugs_by_atc=dict(base.drugs_by_atc), other_drugs=dict(base.other_drugs),
                 site_codes={}, knowledge_version=site.version)
    prefixes = list(base.cause_prefixes)
    cultures = set(base.culture_codes)
    for edit in site.edits:
        table, _, concept = edit.valueset.partition(":")
        if edit.op == "remove":
            _remove(vs, table, concept, edit, prefixes, cultures)
        else:
            _add(vs, table, concept, edit, cultures)
    maps: dict[tuple[str, str], list[CodeMap]] = {}
    for entry in site.code_maps:
        like = _observation_like(vs, entry.concept)
        vs.observations_by_code[entry.key] = ObservationConcept(
            entry.concept, entry.code, entry.display or like.display, like.canonical_unit, like.conversions,
            entry.unit)
        vs.codes_by_concept[entry.concept] = (*vs.codes_by_concept.get(entry.concept, ()), entry.key)
        maps.setdefault((entry.system, entry.code), []).append(entry)
    vs.site_codes.update({k: tuple(v) for k, v in maps.items()})
    return replace(vs, cause_prefixes=tuple(sorted(prefixes, key=lambda p: -len(p[1]))),
                   culture_codes=frozenset(cultures))


def _observation_like(vs: ValueSets, concept: str) -> ObservationConcept:
    """The first table code of ``concept``: its units are the concept's units."""
    for code in vs.codes_by_concept.get(concept, ()):
        found = vs.observations_by_code.get(code)
        if found is not None and found.concept == concept:
            return found
    raise ValueError(f"observation concept {concept!r} has no code left to take its units from")


def _drug_like(table: dict[str, DrugConcept], drug_class: str) -> DrugConcept:
    for drug in table.values():
        if drug.drug_class == drug_class:
            return drug
    raise ValueError(f"drug class {drug_class!r} has no member left")


def _remove(vs: ValueSets, table: str, concept: str, edit: Edit, prefixes: list[tuple[str, str, str]],
            cultures: set[str]) -> None:
    key = (edit.system, edit.code)
    if table == "observation":
        if concept == "blood-culture":
            cultures.discard(edit.code)
        if (obs := vs.observations_by_code.get(edit.code)) is not None and obs.concept == concept:
            del vs.observations_by_code[edit.code]
        vs.codes_by_concept[concept] = tuple(c for c in vs.codes_by_concept.get(concept, ()) if c != edit.code)
    elif table == "drug" or table == "atc":
        drugs = vs.drugs_by_code if table == "drug" else vs.drugs_by_atc
        if (drug := drugs.get(edit.code)) is not None and drug.drug_class == concept:
            del drugs[edit.code]
    elif table == "other-drug":
        if (other := vs.other_drugs.get(key)) is not None:
            groups = other.groups - {concept}
            if groups:
                vs.other_drugs[key] = OtherDrug(other.ingredient, groups)
            else:
                del vs.other_drugs[key]
    elif table == "cause":
        if vs.cause_conditions.get(key) == concept:
            del vs.cause_conditions[key]
        prefixes[:] = [p for p in prefixes if p != (edit.system, edit.code, concept)]
    else:
        mapping = _keyed(vs, table)
        if _concept_of(mapping.get(key)) == concept:
            del mapping[key]


def _add(vs: ValueSets, table: str, concept: str, edit: Edit, cultures: set[str]) -> None:
    key = (edit.system, edit.code)
    if table == "observation":
        if concept == "blood-culture":
            cultures.add(edit.code)
            vs.codes_by_concept[concept] = (*vs.codes_by_concept.get(concept, ()), edit.code)
            return
        like = _observation_like(vs, concept)
        vs.observations_by_code[edit.code] = ObservationConcept(concept, edit.code, edit.display or edit.code,
                                                                like.canonical_unit, like.conversions)
        if edit.code not in vs.codes_by_concept.get(concept, ()):
            vs.codes_by_concept[concept] = (*vs.codes_by_concept.get(concept, ()), edit.code)
    elif table == "drug" or table == "atc":
        drugs = vs.drugs_by_code if table == "drug" else vs.drugs_by_atc
        drug = _drug_like(drugs, concept)
        drugs[edit.code] = DrugConcept(edit.code, edit.display or edit.ingredient, (edit.ingredient,), concept,
                                       drug.role, False, "unknown")
    elif table == "other-drug":
        other = vs.other_drugs.get(key)
        groups = (other.groups if other else frozenset()) | {concept}
        vs.other_drugs[key] = OtherDrug(other.ingredient if other else edit.ingredient, frozenset(groups))
    elif table == "cause":
        vs.cause_conditions[key] = concept
    elif table == "condition":
        vs.conditions[key] = ConditionConcept(concept, edit.system, edit.code, edit.display or edit.code)
    else:
        _keyed(vs, table)[key] = concept


def _keyed(vs: ValueSets, table: str) -> dict[tuple[str, str], Any]:
    tables: dict[str, dict[tuple[str, str], Any]] = {
        "condition": vs.conditions, "route": vs.routes, "culture-result": vs.culture_results}
    return tables[table]


def _concept_of(value: object) -> str | None:
    return value.concept if isinstance(value, ConditionConcept) else value if isinstance(value, str) else None


def code_maps(vs: ValueSets) -> Iterable[CodeMap]:
    """The site code maps in effect."""
    for entries in vs.site_codes.values():
        yield from entries
