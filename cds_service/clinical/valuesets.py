"""Terminology and thresholds, loaded once from the data files in ``clinical/data/``.

Each TSV row names its public source and a verification mark; the thresholds file names a source for every
number (keys [Sxx] resolve in docs/clinical-reference.md section 9). Nothing here reads the clock or the network.
"""

from __future__ import annotations

import ast
import csv
import re
import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
UCUM = "http://unitsofmeasure.org"


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


@dataclass(frozen=True, slots=True)
class ConditionConcept:
    concept: str
    system: str
    code: str
    display: str


@dataclass(frozen=True)
class ValueSets:
    drugs_by_code: dict[str, DrugConcept]
    # (ingredient name, role, class) sorted longest name first, for text matching
    drug_names: tuple[tuple[str, str, str], ...]
    drug_name_pattern: re.Pattern[str]
    observations_by_code: dict[str, ObservationConcept]
    codes_by_concept: dict[str, tuple[str, ...]]
    conditions: dict[tuple[str, str], ConditionConcept]
    routes: dict[tuple[str, str], str]
    thresholds: dict[str, Any]

    def drug(self, code: str) -> DrugConcept | None:
        return self.drugs_by_code.get(code)

    def observation(self, code: str) -> ObservationConcept | None:
        return self.observations_by_code.get(code)

    def loinc_codes(self, *concepts: str) -> tuple[str, ...]:
        out: list[str] = []
        for concept in concepts:
            out.extend(self.codes_by_concept.get(concept, ()))
        return tuple(out)

    def condition_codes(self, *concepts: str) -> tuple[tuple[str, str], ...]:
        return tuple((c.system, c.code) for c in self.conditions.values() if c.concept in concepts)

    def match_drug_name(self, text: str) -> tuple[str, str, str] | None:
        """First known ingredient named in free text: (ingredient, role, class)."""
        found = self.drug_name_pattern.search(text.lower())
        if not found:
            return None
        name = found.group(1)
        for entry in self.drug_names:
            if entry[0] == name:
                return entry
        return None  # pragma: no cover - the pattern is built from drug_names


def _rows(name: str) -> list[dict[str, str]]:
    text = resources.files("cds_service.clinical").joinpath("data", name).read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines(), delimiter="\t"))


_ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Name, ast.Load,
            ast.Add, ast.Sub, ast.Mult, ast.Div, ast.USub)


def _linear(formula: str) -> UnitConversion:
    """Turn a formula in ``x`` such as ``(x-32)*5/9`` into scale and offset, without eval on data."""
    tree = ast.parse(formula.strip(), mode="eval")
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED) or (isinstance(node, ast.Name) and node.id != "x"):
            raise ValueError(f"unsupported unit formula: {formula!r}")

    def ev(node: ast.AST, x: float) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body, x)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.Name):
            return x
        if isinstance(node, ast.UnaryOp):
            return -ev(node.operand, x)
        if isinstance(node, ast.BinOp):
            a, b = ev(node.left, x), ev(node.right, x)
            if isinstance(node.op, ast.Add):
                return a + b
            if isinstance(node.op, ast.Sub):
                return a - b
            if isinstance(node.op, ast.Mult):
                return a * b
            return a / b
        raise ValueError(f"unsupported unit formula: {formula!r}")

    offset = ev(tree, 0.0)
    return UnitConversion(scale=ev(tree, 1.0) - offset, offset=offset)


def _conversions(spec: str) -> dict[str, UnitConversion]:
    out: dict[str, UnitConversion] = {}
    for part in spec.split(";"):
        if ":" not in part:
            continue
        unit, formula = part.split(":", 1)
        out[unit.strip()] = _linear(formula)
    return out


def _drug_rows(name: str, role: str) -> list[DrugConcept]:
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
        for row in _rows(name)
    ]


@cache
def load() -> ValueSets:
    """Load every data file once per process (startup cost, then O(1) lookups)."""
    raw = resources.files("cds_service.clinical").joinpath("data", "thresholds.toml").read_text("utf-8")
    thresholds = tomllib.loads(raw)
    excluded = set(thresholds["exposure"]["excluded_ingredients"])

    drugs: dict[str, DrugConcept] = {}
    for concept in _drug_rows("dopamine-antagonists.tsv", "antagonist"):
        if not set(concept.ingredients) <= excluded:
            drugs[concept.code] = concept
    for concept in _drug_rows("dopaminergic-withdrawal.tsv", "dopaminergic"):
        if concept.drug_class != "other":  # carbidopa alone is not dopaminergic
            drugs.setdefault(concept.code, concept)
    for row in _rows("risk-modifiers.tsv"):
        drugs.setdefault(
            row["code"],
            DrugConcept(row["code"], row["display"], (row["ingredient"],), row["concept"], "lithium", False, "unknown"),
        )

    # Ingredient names for the text fallback. A combination product names its partner too
    # ("codeine; promethazine"), so only ingredients that are themselves in a class are used.
    names: dict[str, tuple[str, str, str]] = {}
    for concept in drugs.values():
        if len(concept.ingredients) == 1:
            ing = concept.ingredients[0]
            names.setdefault(ing, (ing, concept.role, concept.drug_class))
    ordered = tuple(sorted(names.values(), key=lambda e: -len(e[0])))
    pattern = re.compile(r"\b(" + "|".join(re.escape(n[0]) for n in ordered) + r")\b")

    observations: dict[str, ObservationConcept] = {}
    by_concept: dict[str, list[str]] = {}
    for row in _rows("observations.tsv"):
        obs = ObservationConcept(
            concept=row["concept"],
            code=row["code"],
            display=row["display"],
            canonical_unit=row["canonical_unit"],
            conversions=_conversions(row["accepted_units"]),
        )
        observations[obs.code] = obs
        by_concept.setdefault(obs.concept, []).append(obs.code)

    conditions = {
        (row["system"], row["code"]): ConditionConcept(row["concept"], row["system"], row["code"], row["display"])
        for row in _rows("conditions.tsv")
    }
    routes = {(row["system"], row["code"]): row["concept"] for row in _rows("routes.tsv")}
    return ValueSets(
        drugs_by_code=drugs,
        drug_names=ordered,
        drug_name_pattern=pattern,
        observations_by_code=observations,
        codes_by_concept={k: tuple(v) for k, v in by_concept.items()},
        conditions=conditions,
        routes=routes,
        thresholds=thresholds,
    )
