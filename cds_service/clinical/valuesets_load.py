"""The data rows of ``clinical/data/``: the record types a row becomes (drug, observation, condition, unit
conversion) and the readers of the TSV files. :func:`cds_service.clinical.valuesets.load` assembles them, with
thresholds.toml, into the :class:`~cds_service.clinical.valuesets.ValueSets` model once per process."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any


@dataclass(frozen=True, slots=True)
class DrugConcept:
    """One RxNorm code of a drug the rules care about."""

    code: str
    display: str
    ingredients: tuple[str, ...]
    drug_class: str  # e.g. sga, fga-high-potency, antiemetic-d2, levodopa, dopamine-agonist, lithium
    role: str  # "antagonist", "dopaminergic" or "lithium"
    long_acting_injectable: bool
    route_hint: str


@dataclass(frozen=True, slots=True)
class UnitConversion:
    """value_canonical = scale * value + offset (every accepted conversion in the data is linear)."""

    scale: float
    offset: float

    def apply(self, value: float) -> float:
        # Rounded to 3 decimals so that 100.4 [degF] is exactly 38.0 Cel, not 38.00000000000015.
        return round(self.scale * value + self.offset, 3)


@dataclass(frozen=True, slots=True)
class ObservationConcept:
    concept: str
    code: str
    display: str
    canonical_unit: str
    conversions: dict[str, UnitConversion] = field(hash=False)
    implied_unit: str | None = None  # a site code map's unit: a value without a unit is read in it


@dataclass(frozen=True, slots=True)
class ConditionConcept:
    concept: str
    system: str
    code: str
    display: str


@dataclass(frozen=True)
class CodeMap:
    """A site code read as a concept of the rules (a site file's ``[[code_map]]``, cds_service/clinical/site.py):
    ``system|code`` (and, when ``text`` is given, only where the CodeableConcept's text or a coding's display
    equals it, ignoring case) is ``concept``; a value without a unit is read in ``unit``."""

    system: str
    code: str
    concept: str
    text: str | None = None
    unit: str | None = None
    display: str = ""

    @property
    def key(self) -> str:
        """The code under which the reading reaches the rules (``ObservationInput.codes``)."""
        return f"{self.system}|{self.code}" + (f"|{self.text.strip().casefold()}" if self.text else "")


@dataclass(frozen=True, slots=True)
class OtherDrug:
    """A drug that points to another cause of fever or CK rise (antimicrobial, serotonergic, ...)."""

    ingredient: str
    groups: frozenset[str]  # antibacterial, antifungal, serotonergic, mh-trigger, anticholinergic


def rows(name: str) -> list[dict[str, str]]:
    text = resources.files("cds_service.clinical").joinpath("data", name).read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines(), delimiter="\t"))


def _number(text: str) -> float:
    """A decimal, or a ratio of two decimals (``5/9``) written so the table keeps the source's exact factor."""
    parts = text.strip().split("/")
    if len(parts) > 2:
        raise ValueError(f"unit conversion number {text.strip()!r}: a decimal or a/b")
    number = float(parts[0]) / float(parts[1]) if len(parts) == 2 else float(parts[0])
    if not math.isfinite(number):
        raise ValueError(f"unit conversion number {text.strip()!r} is not finite")
    return number


def conversions(spec: str) -> dict[str, UnitConversion]:
    """``unit: scale`` or ``unit: scale: offset`` entries, ``;``-separated (value in the canonical unit =
    scale * value + offset); text without a ``:`` (the culture and panel rows) gives none."""
    out: dict[str, UnitConversion] = {}
    for part in spec.split(";"):
        if ":" not in part:
            continue
        unit, scale, *offset = part.split(":")
        if len(offset) > 1:
            raise ValueError(f"unit conversion {part.strip()!r}: expected unit: scale[: offset]")
        out[unit.strip()] = UnitConversion(_number(scale), _number(offset[0]) if offset else 0.0)
    return out


def drug_rows(name: str, role: str) -> list[DrugConcept]:
    return [
        DrugConcept(
            code=row["code"],
            display=row["display"],
            ingredients=tuple(i.strip() for i in row["ingredient"].split(";") if i.strip()),
            drug_class=row["class"],
            role=role,
            long_acting_injectable=row["long_acting_injectable"] == "yes",
            route_hint=row["route_hint"],
        )
        for row in rows(name)
    ]


def atc_drugs(excluded: set[str]) -> dict[str, DrugConcept]:
    """Substance rows of atc.tsv. Class "other" on the dopaminergic side (MAO-B and COMT inhibitors) is not a
    dopaminergic drug for withdrawal; N05A substances without a sourced class are "antipsychotic"."""
    out: dict[str, DrugConcept] = {}
    for row in rows("atc.tsv"):
        if row["level"] != "substance":
            continue
        ingredients = tuple(i.strip() for i in row["ingredient"].split(";") if i.strip())
        if not ingredients or set(ingredients) & excluded:
            continue
        role, drug_class = row["role"], row["class"] or "antipsychotic"
        if role == "dopaminergic" and drug_class == "other":
            continue
        out[row["code"]] = DrugConcept(row["code"], row["display"], ingredients, drug_class, role, False, "unknown")
    return out


def aliases(classes: dict[str, tuple[str, str, str]]) -> dict[str, tuple[str, str, str]]:
    """Brand and national names (drug-names.tsv) of ingredients the rules classify."""
    out: dict[str, tuple[str, str, str]] = {}
    for row in rows("drug-names.tsv"):
        name = row["name"].strip().lower()
        if len(name) < 4:
            continue
        ingredients = [i.strip() for i in row["ingredient"].split(";") if i.strip()]
        known = [classes[i] for i in ingredients if i in classes and classes[i][1] == row["role"]]
        if known and name not in classes:
            out.setdefault(name, known[-1] if row["role"] == "dopaminergic" else known[0])
    return out


def other_drugs() -> tuple[dict[tuple[str, str], OtherDrug], dict[str, OtherDrug]]:
    groups: dict[tuple[str, str], set[str]] = {}
    names: dict[str, set[str]] = {}
    ingredient_of: dict[tuple[str, str], str] = {}
    for row in rows("antimicrobials.tsv"):
        key = (row["system"], row["code"])
        groups.setdefault(key, set()).add(row["class"])
        ingredient_of[key] = row["ingredient"] or row["display"].lower()
        for ing in row["ingredient"].split(";"):
            if ing.strip() and len(ing.strip()) >= 4:
                names.setdefault(ing.strip(), set()).add(row["class"])
    for row in rows("differential.tsv"):
        if row["group"] not in ("serotonergic", "mh-trigger", "anticholinergic"):
            continue
        key = (row["system"], row["code"])
        groups.setdefault(key, set()).add(row["group"])
        ing = row["ingredient_or_concept"].strip().lower()
        ingredient_of[key] = ing
        if len(ing) >= 4:
            names.setdefault(ing, set()).add(row["group"])
    by_code = {key: OtherDrug(ingredient_of[key], frozenset(g)) for key, g in groups.items()}
    by_name = {name: OtherDrug(name, frozenset(g)) for name, g in names.items()}
    return by_code, by_name


def cause_conditions(thresholds: dict[str, Any]
                      ) -> tuple[dict[tuple[str, str], str], tuple[tuple[str, str, str], ...]]:
    exact: dict[tuple[str, str], str] = {}
    prefixes: list[tuple[str, str, str]] = []
    for row in rows("infection-conditions.tsv"):
        if row["match"] == "prefix" and row["group"] == "febrile-neutropenia":
            continue  # D70 is neutropenia; febrile neutropenia needs R50.81 as well (valuesets README)
        if row["match"] == "prefix":
            prefixes.append((row["system"], row["code"], row["group"]))
        else:
            exact[(row["system"], row["code"])] = row["group"]
    for row in rows("differential.tsv"):
        if row["group"] in ("heat-illness", "malignant-hyperthermia", "serotonin-syndrome"):
            exact.setdefault((row["system"], row["code"]), row["group"])
    wanted = set(thresholds["other_causes"]["condition_concepts"])
    for row in rows("conditions.tsv"):
        if row["concept"] in wanted:
            exact.setdefault((row["system"], row["code"]), row["concept"])
    return exact, tuple(sorted(prefixes, key=lambda p: -len(p[1])))
