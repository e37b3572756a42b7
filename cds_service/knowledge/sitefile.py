"""The site knowledge file (``NMS_CDS_SITE_FILE``, TOML): read, validate, and turn into the clinical core's
:class:`~cds_service.clinical.site.SiteKnowledge`, with one provenance line per override (docs/site-file.md).

Two checks: the form (pydantic models, extra keys forbidden), then the meaning against the packaged knowledge
(thresholds only within the bounds thresholds.toml documents next to each, value sets and concepts that exist,
units the concept accepts). Every problem is one line naming the file and the key.
"""

from __future__ import annotations

import difflib
import hashlib
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import AllowInfNan, BaseModel, ConfigDict, Field, Strict, ValidationError

from cds_service.clinical.site import MAPPABLE, CodeMap, Edit, SiteKnowledge, tables
from cds_service.clinical.valuesets import LOINC, RXNORM, ValueSets, load
from cds_service.errors import ConfigError

Text = Field(min_length=1, max_length=256)
Number = Annotated[float, Strict(), AllowInfNan(False)]  # 5 or 5.0, never "5" or true


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class CodeEntry(_Strict):
    system: str = Text
    code: str = Text
    display: str = Field("", max_length=256)
    ingredient: str = Field("", max_length=128)


class ValueSetChange(_Strict):
    add: list[CodeEntry] = Field(default_factory=list, max_length=10_000)
    remove: list[CodeEntry] = Field(default_factory=list, max_length=10_000)


class CodeMapEntry(_Strict):
    system: str = Text
    code: str = Text
    concept: str = Text
    text: str | None = Field(None, min_length=1, max_length=256)
    unit: str | None = Field(None, min_length=1, max_length=32)
    display: str = Field("", max_length=256)


class SiteFile(_Strict):
    thresholds: dict[str, dict[str, Number]] = Field(default_factory=dict)
    valuesets: dict[str, ValueSetChange] = Field(default_factory=dict)
    code_map: list[CodeMapEntry] = Field(default_factory=list, max_length=1000)


@dataclass(frozen=True)
class Override:
    """One change of the site file: where it is (``file: key``) and what it does."""

    source: str
    change: str


@dataclass(frozen=True)
class LoadedSite:
    site: SiteKnowledge
    path: Path
    overrides: tuple[Override, ...]


def short_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def read(path: Path, package_version: str) -> LoadedSite:
    """The site file at ``path``, validated; :class:`ConfigError` with one line per problem."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"NMS_CDS_SITE_FILE={path}: cannot be read ({exc.strerror or exc})"]) from None
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError([f"{path}: not a valid UTF-8 TOML file: {exc}"]) from None
    try:
        parsed = SiteFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([f"{path}: {_loc(e['loc'])}: {_message(e)}" for e in exc.errors(include_url=False)]
                          ) from None
    checker = _Checker(path, load(None))
    site = checker.check(parsed, f"{package_version}+site.{short_hash(data)}")
    if checker.problems:
        raise ConfigError(checker.problems)
    try:
        load(site)  # built once here, at start; an edit that empties what another needs is refused now
    except (KeyError, ValueError) as exc:
        raise ConfigError([f"{path}: the changes cannot be applied together: {exc}"]) from None
    return LoadedSite(site, path, tuple(checker.overrides))


def _loc(loc: Iterable[object]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = str(part)
            out += ("." if out else "") + (text if text.replace("_", "").replace("-", "").isalnum() else f'"{text}"')
    return out or "(file)"


def _message(error: Mapping[str, Any]) -> str:
    if error.get("type") == "extra_forbidden":
        return "unknown key (not part of the site file format; see docs/site-file.md)"
    if error.get("type") == "missing":
        return "required key missing"
    return str(error.get("msg", "invalid")).removeprefix("Value error, ")


def _closest(word: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class _Checker:
    """The meaning of a well-formed site file, against the packaged knowledge ``vs``."""

    def __init__(self, path: Path, vs: ValueSets) -> None:
        self.path = path
        self.vs = vs
        self.tables = tables(vs)
        self.problems: list[str] = []
        self.overrides: list[Override] = []

    def problem(self, key: str, text: str) -> None:
        self.problems.append(f"{self.path}: {key}: {text}")

    def note(self, key: str, text: str) -> None:
        self.overrides.append(Override(f"{self.path}: {key}", text))

    def check(self, parsed: SiteFile, version: str) -> SiteKnowledge:
        values = self._thresholds(parsed.thresholds)
        edits = self._valuesets(parsed.valuesets)
        maps = self._code_maps(parsed.code_map, edits)
        return SiteKnowledge(version, values, tuple(edits), tuple(maps))

    def _thresholds(self, given: dict[str, dict[str, float]]) -> tuple[tuple[str, str, float], ...]:
        out: list[tuple[str, str, float]] = []
        th = self.vs.thresholds
        settable = sorted(s for s, v in th.items() if isinstance(v, dict) and "bounds" in v)
        for section, items in given.items():
            if section not in settable:
                self.problem(f"thresholds.{section}", "not a section with thresholds a site may set; sections: "
                             + ", ".join(settable) + _closest(section, settable))
                continue
            bounds: dict[str, list[float]] = th[section]["bounds"]
            for key, value in items.items():
                where = f"thresholds.{section}.{key}"
                if key not in bounds:
                    self.problem(where, f"not a threshold a site may set; in [{section}]: "
                                 + ", ".join(sorted(bounds)) + _closest(key, bounds))
                    continue
                low, high = bounds[key]
                whole = isinstance(th[section][key], int)
                if whole and value != int(value):
                    self.problem(where, f"{value:g} is not a whole number")
                    continue
                if not low <= value <= high:
                    self.problem(where, f"{value:g} is outside the documented safe bounds {low:g}-{high:g} "
                                 f"(default {th[section][key]:g}; bounds and their rationale: thresholds.toml "
                                 f"[{section}.bounds], docs/site-file.md)")
                    continue
                number = int(value) if whole else float(value)
                out.append((section, key, number))
                self.note(where, f"{section}.{key} = {number:g} (default {th[section][key]:g}; "
                          f"bounds {low:g}-{high:g})")
        effective = {(s, k): v for s, k, v in out}
        hyper = th["hyperthermia"]
        extreme = effective.get(("hyperthermia", "extreme_cel"), hyper["extreme_cel"])
        single = effective.get(("hyperthermia", "extreme_single_cel"), hyper["extreme_single_cel"])
        if single < extreme:
            self.problem("thresholds.hyperthermia.extreme_single_cel",
                         f"{single:g} is below extreme_cel {extreme:g}: one reading must take at least as much "
                         "as two")
        return tuple(out)

    def _valuesets(self, given: dict[str, ValueSetChange]) -> list[Edit]:
        out: list[Edit] = []
        for name, change in given.items():
            where = f'valuesets."{name}"'
            if name not in self.tables:
                self.problem(where, "unknown value set (names: `nms-cds export-knowledge` or docs/site-file.md)"
                             + _closest(name, self.tables))
                continue
            members = {(m.system, m.code) for m in self.tables[name]}
            table, _, concept = name.partition(":")
            for i, entry in enumerate(change.remove):
                if (entry.system, entry.code) not in members:
                    self.problem(f"{where}.remove[{i}]", f"{entry.system}|{entry.code} is not in {name}")
                    continue
                out.append(Edit(name, "remove", entry.system, entry.code))
                self.note(f"{where}.remove[{i}]", f"{name}: {entry.system}|{entry.code} removed")
            for i, entry in enumerate(change.add):
                trouble = self._addition(table, concept, entry, members)
                if trouble:
                    self.problem(f"{where}.add[{i}]", trouble)
                    continue
                out.append(Edit(name, "add", entry.system, entry.code, entry.display, entry.ingredient.lower()))
                self.note(f"{where}.add[{i}]", f"{name}: {entry.system}|{entry.code} added")
        return out

    def _addition(self, table: str, concept: str, entry: CodeEntry, members: set[tuple[str, str]]) -> str:
        if (entry.system, entry.code) in members:
            return f"{entry.system}|{entry.code} is already in {table}:{concept}"
        if table == "observation":
            if entry.system != LOINC:
                return f"observation value sets hold LOINC codes ({LOINC}); map a local code with [[code_map]]"
            other = self.vs.observations_by_code.get(entry.code)
            if other is not None:
                return f"LOINC {entry.code} is read as {other.concept}; remove it from observation:{other.concept}"
        if table == "drug" and entry.system != RXNORM:
            return f"drug value sets hold RxNorm codes ({RXNORM})"
        if table == "atc" and entry.system not in self.vs.atc_systems:
            return "atc value sets hold ATC codes (" + ", ".join(sorted(self.vs.atc_systems)) + ")"
        if table in ("drug", "atc", "other-drug") and not entry.ingredient:
            return "ingredient is required for a drug (the ingredient the card names)"
        return ""

    def _code_maps(self, given: list[CodeMapEntry], edits: list[Edit]) -> list[CodeMap]:
        out: list[CodeMap] = []
        removed = {(e.system, e.code) for e in edits if e.op == "remove"}
        seen: set[str] = set()
        for i, entry in enumerate(given):
            where = f"code_map[{i}]"
            if entry.concept not in MAPPABLE:
                self.problem(f"{where}.concept", f"unknown concept {entry.concept!r}; concepts the rules read: "
                             + ", ".join(sorted(MAPPABLE)) + _closest(entry.concept, MAPPABLE))
                continue
            like = next((self.vs.observations_by_code[c] for c in self.vs.codes_by_concept.get(entry.concept, ())
                         if c in self.vs.observations_by_code), None)
            if like is not None and entry.unit is not None and entry.unit not in like.conversions:
                self.problem(f"{where}.unit", f"{entry.unit!r} is not a unit of {entry.concept}; accepted: "
                             + ", ".join(like.conversions))
                continue
            known = self.vs.observations_by_code.get(entry.code) if entry.system == LOINC else None
            if known is not None and (entry.system, entry.code) not in removed:
                self.problem(where, f"LOINC {entry.code} is already read as {known.concept}; remove it from "
                             f"observation:{known.concept} first")
                continue
            mapped = CodeMap(entry.system, entry.code, entry.concept, entry.text, entry.unit, entry.display)
            if mapped.key in seen:
                self.problem(where, f"{entry.system}|{entry.code} is mapped twice")
                continue
            seen.add(mapped.key)
            out.append(mapped)
            when = f" where the text is {entry.text!r}" if entry.text else ""
            unit = f", a value without a unit in {entry.unit}" if entry.unit else ""
            self.note(where, f"{entry.system}|{entry.code}{when} read as {entry.concept}{unit}")
        return out
