"""Terminology and thresholds: the :class:`ValueSets` model, its lookups, and :func:`load`, which assembles it
once per process from the data files in ``clinical/data/`` (rows read by :mod:`cds_service.clinical.valuesets_load`).

Each TSV row names its public source and a verification mark; the thresholds file names a source for every
number (keys [Sxx] resolve in docs/clinical-reference.md section 9). Nothing here reads the clock or the network.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field, replace
from functools import cache, lru_cache
from importlib import resources
from typing import Any, Protocol

from cds_service.clinical import valuesets_load as read
from cds_service.clinical.valuesets_load import CodeMap as CodeMap
from cds_service.clinical.valuesets_load import ConditionConcept as ConditionConcept
from cds_service.clinical.valuesets_load import DrugConcept as DrugConcept
from cds_service.clinical.valuesets_load import ObservationConcept as ObservationConcept
from cds_service.clinical.valuesets_load import OtherDrug as OtherDrug
from cds_service.clinical.valuesets_load import UnitConversion as UnitConversion


class Overlay(Protocol):
    """What a site changes over the packaged data (:class:`cds_service.clinical.site.SiteKnowledge`): hashable,
    so that :func:`load` builds each distinct knowledge once."""

    @property
    def version(self) -> str: ...

    @property
    def empty(self) -> bool: ...

    def apply(self, base: ValueSets) -> ValueSets: ...

    def __hash__(self) -> int: ...

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10 = "http://hl7.org/fhir/sid/icd-10"  # WHO ICD-10
ICD10GM = "http://fhir.de/CodeSystem/bfarm/icd-10-gm"  # BfArM ICD-10-GM (German modification)
UCUM = "http://unitsofmeasure.org"
ATC = "http://www.whocc.no/atc"


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
    # ATC substance code -> concept (WHO and national editions such as BfArM's are the same codes)
    drugs_by_atc: dict[str, DrugConcept] = field(default_factory=dict)
    atc_systems: frozenset[str] = frozenset()
    # lower-case brand or national name -> (ingredient, role, class)
    drug_aliases: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    # other causes: drugs by (system, code) (ATC under the key ATC) and by ingredient name
    other_drugs: dict[tuple[str, str], OtherDrug] = field(default_factory=dict)
    other_drug_names: dict[str, OtherDrug] = field(default_factory=dict)
    other_drug_pattern: re.Pattern[str] | None = None
    # other causes: conditions by (system, code) exact, and ICD-10-CM prefixes -> group
    cause_conditions: dict[tuple[str, str], str] = field(default_factory=dict)
    cause_prefixes: tuple[tuple[str, str, str], ...] = ()  # (system, prefix, group)
    culture_codes: frozenset[str] = frozenset()
    culture_results: dict[tuple[str, str], str] = field(default_factory=dict)  # -> positive/negative/...
    unit_spellings: dict[str, str] = field(default_factory=dict)  # spelling -> UCUM code
    name_keys: dict[str, dict[str, Any]] = field(default_factory=dict)  # "drug"/"other": normalised -> name
    # condition code systems ([terminology] in thresholds.toml): older URIs read as the current one, the ICD-10
    # editions whose codes are normalised (case, role markers, missing dot), and the short names cards show
    system_aliases: dict[str, str] = field(default_factory=dict)
    icd10_systems: frozenset[str] = frozenset()
    icd10_markers: str = ""
    system_names: dict[str, str] = field(default_factory=dict)
    # a site's local code maps ((system, code) -> maps; clinical/site.py) and the knowledge version in effect
    site_codes: dict[tuple[str, str], tuple[CodeMap, ...]] = field(default_factory=dict)
    knowledge_version: str = ""

    def atc(self, system: str | None, code: str) -> DrugConcept | None:
        return self.drugs_by_atc.get(code) if system in self.atc_systems else None

    def other_drug(self, system: str | None, code: str | None) -> OtherDrug | None:
        if not code:
            return None
        key = ATC if system in self.atc_systems else system
        return self.other_drugs.get((key or "", code))

    def match_other_drug(self, text: str) -> list[OtherDrug]:
        """Every antimicrobial, serotonergic, MH-trigger or anticholinergic ingredient named in free text."""
        return [self.other_drug_names[name] for name in _names_in(text, self._other_keys(), first=False)]

    def _other_keys(self) -> dict[str, Any]:
        return self.name_keys["other"]

    def _drug_keys(self) -> dict[str, Any]:
        return self.name_keys["drug"]

    def condition_key(self, system: str | None, code: str | None) -> tuple[str, str]:
        """(system, code) as the condition tables list it: an older URI of a code system becomes the current one
        (DIMDI's ICD-10-GM URI -> BfArM's), and an ICD-10 code (CM, WHO or GM) is read in upper case without
        surrounding space, without the ICD-10-GM role markers that may trail it (Kreuz ``†``/``+``, Stern ``*``,
        Ausrufezeichen ``!``: ``U07.1!`` -> ``U07.1``) and with its dot (``A419`` -> ``A41.9``)."""
        sys = (system or "").strip()
        sys = self.system_aliases.get(sys, sys)
        text = (code or "").strip()
        if sys in self.icd10_systems:
            text = text.upper().rstrip(self.icd10_markers + " ").strip()
            if len(text) > 3 and "." not in text and _ICD10_CATEGORY.match(text[:3]):
                text = f"{text[:3]}.{text[3:]}"
        return sys, text

    def cause_of(self, system: str | None, code: str | None) -> str | None:
        """The differential group (sepsis, pneumonia, heat-illness, ...) of a condition code, if any."""
        if not system or not code:
            return None
        key = self.condition_key(system, code)
        group = self.cause_conditions.get(key)
        if group is not None:
            return group
        sys, text = key
        for table_system, prefix, grp in self.cause_prefixes:
            if table_system == sys and text.startswith(prefix):
                return grp
        return None

    def condition(self, system: str | None, code: str | None) -> ConditionConcept | None:
        """The conditions.tsv concept (nms, sepsis, heat-stroke, ...) of a condition code, read as condition_key
        reads it."""
        if not system or not code:
            return None
        return self.conditions.get(self.condition_key(system, code))

    def is_condition(self, concept: str, system: str | None, code: str | None) -> bool:
        found = self.condition(system, code)
        return found is not None and found.concept == concept

    def system_name(self, system: str | None) -> str:
        """The short name of a code system for a card ("ICD-10-GM"), or its URI when it has none."""
        sys = (system or "").strip()
        sys = self.system_aliases.get(sys, sys)
        return self.system_names.get(sys, sys or "code")

    def drug(self, code: str) -> DrugConcept | None:
        return self.drugs_by_code.get(code)

    def observation(self, code: str) -> ObservationConcept | None:
        return self.observations_by_code.get(code)

    def loinc_codes(self, *concepts: str) -> tuple[str, ...]:
        out: list[str] = []
        for concept in concepts:
            out.extend(self.codes_by_concept.get(concept, ()))
        return tuple(out)

    def query_codes(self, *concepts: str) -> tuple[str, ...]:
        """``system|code`` of every code of ``concepts`` for a FHIR search: the LOINC codes, and the code of each
        site code map (without its text, which a search cannot filter on)."""
        out: dict[str, None] = {}
        for code in self.loinc_codes(*concepts):
            out[code.rsplit("|", 1)[0] if code.count("|") > 1 else code if "|" in code else f"{LOINC}|{code}"] = None
        return tuple(out)

    def condition_codes(self, *concepts: str) -> tuple[tuple[str, str], ...]:
        return tuple((c.system, c.code) for c in self.conditions.values() if c.concept in concepts)

    def match_drug_name(self, text: str) -> tuple[str, str, str] | None:
        """First known ingredient, brand or national name in free text: (ingredient, role, class)."""
        found = _names_in(text, self._drug_keys(), first=True)
        if not found:
            return None
        name = found[0]
        alias = self.drug_aliases.get(name)
        if alias is not None:
            return alias
        for entry in self.drug_names:
            if entry[0] == name:
                return entry
        return None  # pragma: no cover - the pattern is built from drug_names and drug_aliases


# Free-text matching: the text and every name are reduced to lower-case words ("st. john's wort" ->
# "st john s wort"); the first word n-gram (longest first at each position) that is a known name wins. The same
# answer as a word-bounded regular expression over all names, in O(words) dictionary look-ups, cached per text.
_WORD = re.compile(r"[^\W_]+")
_ICD10_CATEGORY = re.compile(r"[A-Z][0-9][0-9A-Z]")
_MAX_WORDS = 4


def _normal(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


_STARTS = "\x00starts"  # not a word: the key under which _keys keeps the multi-word starts


def _keys(names: Iterable[str]) -> dict[str, Any]:
    """Normalised name -> name as listed (first listed wins), and the first words of multi-word names."""
    out: dict[str, Any] = {}
    starts: dict[str, int] = {}
    for name in names:
        key = _normal(name)
        out.setdefault(key, name)
        words = key.split(" ")
        if len(words) > 1:
            starts[words[0]] = max(len(words), starts.get(words[0], 1))
    out[_STARTS] = starts
    return out


def _names_in(text: str, keys: dict[str, Any], *, first: bool) -> list[str]:
    return list(_cached_names(text[:1000], id(keys), first, keys))


_NAME_CACHE: dict[tuple[str, int, bool], tuple[str, ...]] = {}


def _cached_names(text: str, key_id: int, first: bool, keys: dict[str, Any]) -> tuple[str, ...]:
    token = (text, key_id, first)
    hit = _NAME_CACHE.get(token)
    if hit is not None:
        return hit
    words = _WORD.findall(text.lower())
    starts: dict[str, int] = keys[_STARTS]  # first word of a multi-word name -> longest such name, in words
    found: list[str] = []
    i, count = 0, len(words)
    while i < count:
        word = words[i]
        longest = starts.get(word)
        step = 1
        if longest is None:
            name = keys.get(word)
        else:
            name = None
            for n in range(min(longest, count - i), 0, -1):
                name = keys.get(word if n == 1 else " ".join(words[i:i + n]))
                if name is not None:
                    step = n
                    break
        if name is not None:
            found.append(name)
            if first:
                break
        i += step
    result = tuple(found)
    if len(_NAME_CACHE) >= 8192:  # bounded: a hostile record cannot grow it without limit
        _NAME_CACHE.clear()
    _NAME_CACHE[token] = result
    return result


# The site knowledge of the service handling the current request (set by the web layer around each request,
# cds_service/web/middleware.py); None outside a request: the packaged defaults.
_ACTIVE: ContextVar[Overlay | None] = ContextVar("nms_cds_site_knowledge", default=None)


def load(site: Overlay | None = None) -> ValueSets:
    """The value sets and thresholds of ``site`` (default: the knowledge in effect, :func:`active`): the
    packaged data with the site's changes, built once per distinct knowledge (then O(1) lookups)."""
    return _load(site if site is not None else _ACTIVE.get())


def active() -> Overlay | None:
    """The site knowledge in effect in this context (None: the packaged defaults)."""
    return _ACTIVE.get()


def activate(site: Overlay | None) -> Token[Overlay | None]:
    """Make ``site`` the knowledge :func:`load` returns in this context, until :func:`deactivate`."""
    return _ACTIVE.set(site)


def deactivate(token: Token[Overlay | None]) -> None:
    _ACTIVE.reset(token)


@contextmanager
def using(site: Overlay | None) -> Iterator[ValueSets]:
    """``with using(site) as vs:`` the block runs with ``site`` in effect."""
    token = activate(site)
    try:
        yield load()
    finally:
        deactivate(token)


@lru_cache(maxsize=16)
def _load(site: Overlay | None) -> ValueSets:
    if site is None:
        return _defaults()
    if site.empty:
        return replace(_defaults(), knowledge_version=site.version)
    return site.apply(_defaults())


@cache
def _defaults() -> ValueSets:
    """Load every data file once per process (startup cost, then O(1) lookups)."""
    raw = resources.files("cds_service.clinical").joinpath("data", "thresholds.toml").read_text("utf-8")
    thresholds = tomllib.loads(raw)
    excluded = set(thresholds["exposure"]["excluded_ingredients"])

    drugs: dict[str, DrugConcept] = {}
    for concept in read.drug_rows("dopamine-antagonists.tsv", "antagonist"):
        if not set(concept.ingredients) <= excluded:
            drugs[concept.code] = concept
    for concept in read.drug_rows("dopaminergic-withdrawal.tsv", "dopaminergic"):
        if concept.drug_class != "other":  # carbidopa alone is not dopaminergic
            drugs.setdefault(concept.code, concept)
    for row in read.rows("risk-modifiers.tsv"):
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
    by_atc = read.atc_drugs(excluded)
    classes = {n[0]: n for n in ordered}
    for concept in by_atc.values():
        for ing in concept.ingredients:
            classes.setdefault(ing, (ing, concept.role, concept.drug_class))
    aliases = read.aliases(classes)
    alternatives = sorted({*classes, *aliases}, key=lambda n: (-len(n), n))
    pattern = re.compile(r"\b(" + "|".join(re.escape(n) for n in alternatives) + r")\b")
    for ing, entry in classes.items():
        if ing not in names:
            aliases.setdefault(ing, entry)

    observations: dict[str, ObservationConcept] = {}
    by_concept: dict[str, list[str]] = {}
    for row in read.rows("observations.tsv"):
        obs = ObservationConcept(
            concept=row["concept"],
            code=row["code"],
            display=row["display"],
            canonical_unit=row["canonical_unit"],
            conversions=read.conversions(row["accepted_units"]),
        )
        observations[obs.code] = obs
        by_concept.setdefault(obs.concept, []).append(obs.code)

    conditions = {
        (row["system"], row["code"]): ConditionConcept(row["concept"], row["system"], row["code"], row["display"])
        for row in read.rows("conditions.tsv")
    }
    for row in read.rows("observations-extra.tsv"):
        if row["canonical_unit"] == "-":
            continue
        obs = ObservationConcept(row["concept"], row["code"], row["display"], row["canonical_unit"],
                                 read.conversions(row["accepted_units"]))
        observations.setdefault(obs.code, obs)
        if obs.code not in by_concept.setdefault(obs.concept, []):
            by_concept[obs.concept].append(obs.code)
    extra = read.rows("observations-extra.tsv")
    cultures = frozenset(r["code"] for r in extra if r["concept"] == "blood-culture")
    by_concept["blood-culture"] = sorted(cultures)
    culture_results = {(r["system"], r["code"]): r["concept"].removeprefix("culture-result-")
                       for r in extra if r["concept"].startswith("culture-result-")}
    routes = {(row["system"], row["code"]): row["concept"] for row in read.rows("routes.tsv")}
    other, other_names = read.other_drugs()
    other_pattern = re.compile(r"\b(" + "|".join(re.escape(n) for n in sorted(other_names, key=lambda n: -len(n)))
                               + r")\b")
    exact, prefixes = read.cause_conditions(thresholds)
    terminology = thresholds["terminology"]
    spellings = {row["unit"]: row["canonical"] for row in read.rows("ucum-variants.tsv")}
    return ValueSets(
        drugs_by_code=drugs,
        drug_names=ordered,
        drug_name_pattern=pattern,
        observations_by_code=observations,
        codes_by_concept={k: tuple(v) for k, v in by_concept.items()},
        conditions=conditions,
        routes=routes,
        thresholds=thresholds,
        drugs_by_atc=by_atc,
        atc_systems=frozenset(thresholds["terminology"]["atc_systems"]),
        drug_aliases=aliases,
        other_drugs=other,
        other_drug_names=other_names,
        other_drug_pattern=other_pattern,
        cause_conditions=exact,
        cause_prefixes=prefixes,
        culture_codes=cultures,
        culture_results=culture_results,
        unit_spellings=spellings,
        name_keys={"drug": _keys([*(n[0] for n in ordered), *aliases]), "other": _keys(other_names)},
        system_aliases=dict(terminology.get("system_aliases", {})),
        icd10_systems=frozenset(terminology.get("icd10_systems", ())),
        icd10_markers=str(terminology.get("icd10_markers", "")),
        system_names=dict(terminology.get("system_names", {})),
    )
