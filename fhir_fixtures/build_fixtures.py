"""Deterministic generator of the nms-cds FHIR fixtures (the source of truth for fhir_fixtures/).

    .venv/bin/python fhir_fixtures/build_fixtures.py [OUT_DIR]

rewrites ``<OUT_DIR>/scenarios/<id>/{bundle,request,expected}.json`` and ``<OUT_DIR>/README.md``
(default OUT_DIR: this folder). Output is byte-for-byte identical on every run: no clock, no randomness.

All data are SYNTHETIC (every resource carries the v3-ActReason ``HTEST`` tag). Times are written relative
to ``cds_service.devtools.fixtures.ANCHOR``; ``cds_service.devtools.fixtures.rebase`` moves them to another "now".
Every RxNorm / LOINC / SNOMED / ICD-10-CM code is looked up in ``cds_service/clinical/data/*.tsv``; the
builders raise when a code is missing there, except the few non-listed codes marked ``listed=False``
below, each with the public file it was taken from.
"""

from __future__ import annotations

import copy
import csv
import json
import shutil
import sys
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cds_service.clinical.valuesets import ATC, ICD10, ICD10CM, ICD10GM, LOINC, RXNORM, SNOMED, UCUM, load  # noqa: E402
from cds_service.devtools.fixtures import ANCHOR, fill_prefetch  # noqa: E402
from cds_service.services.templates import prefetch_templates  # noqa: E402

JsonDict = dict[str, Any]

VS = load()
SYNTHETIC_TAG = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
    "code": "HTEST",
    "display": "test health data",
}
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
HOOK_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:nms-cds:fhir-fixtures")
CRITERION_POINTS = {"exposure": 20, "hyperthermia": 18, "ck": 10, "autonomic": 10, "hypermetabolism": 5}


def _routes() -> dict[str, str]:
    text = importlib_resources.files("cds_service.clinical").joinpath("data", "routes.tsv").read_text("utf-8")
    return {row["code"]: row["display"] for row in csv.DictReader(text.splitlines(), delimiter="\t")}


ROUTES = _routes()

# Codes used below that are NOT in the project's TSV files (non-dopaminergic, non-antagonist drugs):
# RxNorm 198440 "Acetaminophen 500 MG Oral Tablet" appears in the Synthea data of the real sandbox request
# (datasets/sandbox-requests/sandbox-order-sign-request.json, prefetch "meds").
ACETAMINOPHEN_500 = ("198440", "Acetaminophen 500 MG Oral Tablet")


# ---------------------------------------------------------------------------------------------------
# time helpers (everything relative to ANCHOR = "now")
# ---------------------------------------------------------------------------------------------------


def at(hours: float = 0, days: float = 0) -> str:
    """FHIR instant ``ANCHOR + days + hours`` in UTC (negative = past)."""
    return (ANCHOR + timedelta(days=days, hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")


def on(days: int = 0) -> str:
    """FHIR date ``ANCHOR + days``."""
    return (ANCHOR + timedelta(days=days)).date().isoformat()


TODAY = on(0)


# ---------------------------------------------------------------------------------------------------
# resource builders
# ---------------------------------------------------------------------------------------------------


def coding(system: str, code: str, display: str) -> JsonDict:
    return {"system": system, "code": code, "display": display}


def quantity(value: float, unit: str) -> JsonDict:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def loinc(code: str) -> JsonDict:
    concept = VS.observation(code)
    if concept is None:
        raise KeyError(f"LOINC {code} is not in observations.tsv")
    return coding(LOINC, code, concept.display)


def check_unit(code: str, unit: str) -> None:
    concept = VS.observation(code)
    if concept is None or unit not in concept.conversions:
        raise KeyError(f"unit {unit!r} is not accepted for LOINC {code} in observations.tsv")


def rxnorm(code: str, *, listed: bool = True, display: str | None = None) -> JsonDict:
    if listed:
        drug = VS.drug(code)
        if drug is None:
            raise KeyError(f"RxNorm {code} is not in the drug TSV files")
        display = drug.display
    if display is None:
        raise ValueError(f"RxNorm {code}: a non-listed code needs a display")
    return coding(RXNORM, code, display)


BFARM_ATC = "http://fhir.de/CodeSystem/bfarm/atc"  # German edition of the WHO ATC index (data/thresholds.toml)


def atc(code: str, display: str, *, system: str = ATC) -> JsonDict:
    """An ATC coding; the code must be in data/atc.tsv (dopamine side) or data/antimicrobials.tsv."""
    if code not in VS.drugs_by_atc and VS.other_drug(ATC, code) is None:
        raise KeyError(f"ATC {code} is not in atc.tsv or antimicrobials.tsv")
    return coding(system, code, display)


def _infection_displays() -> dict[tuple[str, str], str]:
    text = importlib_resources.files("cds_service.clinical").joinpath("data", "infection-conditions.tsv").read_text(
        "utf-8")
    return {(r["system"], r["code"]): r["display"] for r in csv.DictReader(text.splitlines(), delimiter="\t")
            if r["match"] == "exact"}


INFECTION_DISPLAYS = _infection_displays()


def condition_coding(system: str, code: str) -> JsonDict:
    concept = VS.conditions.get((system, code))
    if concept is not None:
        return coding(system, code, concept.display)
    display = INFECTION_DISPLAYS.get((system, code))
    if display is None:
        raise KeyError(f"{system}|{code} is not in conditions.tsv or (exact) infection-conditions.tsv")
    return coding(system, code, display)


def route(code: str) -> JsonDict:
    return {"coding": [coding(SNOMED, code, ROUTES[code])]}


@dataclass
class Dose:
    """A dosage instruction: ``value unit`` ``frequency`` times a day by ``route``."""

    value: float
    unit: str = "mg"
    frequency: int = 1
    route: str | None = "26643006"  # oral
    text: str | None = None
    as_needed: bool = False

    def fhir(self) -> JsonDict:
        out: JsonDict = {}
        out["text"] = self.text or f"{self.value:g} {self.unit} {self._freq_text()}"
        out["timing"] = {"repeat": {"frequency": self.frequency, "period": 1, "periodUnit": "d"}}
        if self.as_needed:
            out["asNeededBoolean"] = True
        if self.route:
            out["route"] = route(self.route)
        out["doseAndRate"] = [{"doseQuantity": quantity(self.value, self.unit)}]
        return out

    def _freq_text(self) -> str:
        names = {1: "once daily", 2: "twice daily", 3: "three times daily", 4: "four times daily"}
        return names.get(self.frequency, f"{self.frequency} times daily")


@dataclass
class Expected:
    indicator: str | None
    criteria: list[str]
    drugs: list[str]
    notes: str
    evidence: dict[str, float | int] = field(default_factory=dict)
    suggest_delete_draft: str | None = None


@dataclass
class Builder:
    """Collects one scenario's resources. Ids are ``<scenario-id>-<kind>-<n>`` (stable, collision-free)."""

    sid: str
    title: str
    shows: str
    gender: str
    birth_date: str
    resources: list[JsonDict] = field(default_factory=list)
    drafts: list[JsonDict] = field(default_factory=list)
    counters: Counter[str] = field(default_factory=Counter)
    # prefetch key -> resources of the bundle that the client put into that key although its search does
    # not match them (a client that filters by its own idea of the patient); appended to the filled key
    unsolicited: dict[str, list[JsonDict]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pid = f"nms-{self.sid}"
        self.add(
            {
                "resourceType": "Patient",
                "id": self.pid,
                "identifier": [{"system": "urn:nms-cds:fixture-scenario", "value": self.sid}],
                "name": [{"text": f"SYNTHETIC {self.title}", "family": "Synthetic", "given": ["Fixture"]}],
                "gender": self.gender,
                "birthDate": self.birth_date,
            },
            with_id=False,
        )

    # -- plumbing ---------------------------------------------------------------------------------
    def next_id(self, kind: str) -> str:
        self.counters[kind] += 1
        return f"{self.sid}-{kind}-{self.counters[kind]}"

    def add(self, resource: JsonDict, kind: str | None = None, *, with_id: bool = True) -> JsonDict:
        """Add a server-side resource (id first, then the synthetic-data tag, then the content)."""
        head: JsonDict = {"resourceType": resource["resourceType"]}
        if with_id:
            head["id"] = self.next_id(kind or resource["resourceType"].lower())
        else:
            head["id"] = resource["id"]
        head["meta"] = {"tag": [SYNTHETIC_TAG]}
        body = {k: v for k, v in resource.items() if k not in ("resourceType", "id")}
        full = head | body
        self.resources.append(full)
        return full

    @property
    def subject(self) -> JsonDict:
        return {"reference": f"Patient/{self.pid}"}

    # -- observations -----------------------------------------------------------------------------
    def observation(
        self,
        kind: str,
        codes: list[str],
        when: str,
        *,
        category: str,
        value: float | None = None,
        unit: str | None = None,
        ref: tuple[float | None, float | None] | None = None,
        components: list[tuple[str, float, str]] | None = None,
        status: str = "final",
        issued: str | None = None,
    ) -> JsonDict:
        first = VS.observation(codes[0])
        assert first is not None, codes[0]
        obs: JsonDict = {
            "resourceType": "Observation",
            "status": status,
            "category": [{"coding": [coding(OBS_CATEGORY, category, category.replace("-", " ").title())]}],
            "code": {"coding": [loinc(c) for c in codes], "text": first.display},
            "subject": self.subject,
            "effectiveDateTime": when,
        }
        if issued:
            obs["issued"] = issued
        if value is not None and unit is not None:
            check_unit(codes[0], unit)
            obs["valueQuantity"] = quantity(value, unit)
        if ref is not None and unit is not None:
            low, high = ref
            rng: JsonDict = {}
            if low is not None:
                rng["low"] = quantity(low, unit)
            if high is not None:
                rng["high"] = quantity(high, unit)
            obs["referenceRange"] = [rng]
        if components:
            obs["component"] = []
            for code, comp_value, comp_unit in components:
                check_unit(code, comp_unit)
                obs["component"].append(
                    {"code": {"coding": [loinc(code)]}, "valueQuantity": quantity(comp_value, comp_unit)}
                )
        return self.add(obs, kind)

    def temp(self, when: str, value: float, unit: str = "Cel", status: str = "final") -> JsonDict:
        # body temperature co-coded as oral temperature, as Synthea and the FHIR example f202 do
        return self.observation("temp", ["8310-5", "8331-1"], when, category="vital-signs", value=value, unit=unit,
                                status=status)

    def hr(self, when: str, value: float) -> JsonDict:
        return self.observation("hr", ["8867-4"], when, category="vital-signs", value=value, unit="/min")

    def rr(self, when: str, value: float) -> JsonDict:
        return self.observation("rr", ["9279-1"], when, category="vital-signs", value=value, unit="/min")

    def bp(self, when: str, systolic: float, diastolic: float, *, separate: bool = False) -> None:
        if separate:
            self.observation("sbp", ["8480-6"], when, category="vital-signs", value=systolic, unit="mm[Hg]")
            self.observation("dbp", ["8462-4"], when, category="vital-signs", value=diastolic, unit="mm[Hg]")
        else:
            self.observation("bp", ["85354-9"], when, category="vital-signs",
                             components=[("8480-6", systolic, "mm[Hg]"), ("8462-4", diastolic, "mm[Hg]")])

    def vitals(
        self,
        hours: float,
        *,
        t: float | None = None,
        t_unit: str = "Cel",
        hr: float | None = None,
        rr: float | None = None,
        bp: tuple[float, float] | None = None,
        separate_bp: bool = False,
    ) -> None:
        """One round of vital signs taken at ``ANCHOR + hours``."""
        when = at(hours)
        if t is not None:
            self.temp(when, t, t_unit)
        if hr is not None:
            self.hr(when, hr)
        if rr is not None:
            self.rr(when, rr)
        if bp is not None:
            self.bp(when, *bp, separate=separate_bp)

    def baseline(self, *, t: float = 36.8, hr: float = 80, rr: float = 16, bp: tuple[float, float] = (120, 75),
                 t_unit: str = "Cel", separate_bp: bool = False) -> None:
        """Two identical pre-illness rounds 5 and 4.5 days before ANCHOR (inside every baseline window)."""
        for hours in (-120, -108):
            self.vitals(hours, t=t, t_unit=t_unit, hr=hr, rr=rr, bp=bp, separate_bp=separate_bp)

    def lab(self, kind: str, code: str, hours: float, value: float, unit: str, *,
            ref: tuple[float | None, float | None] | None = None, status: str = "final") -> JsonDict:
        return self.observation(kind, [code], at(hours), category="laboratory", value=value, unit=unit, ref=ref,
                                status=status, issued=at(hours + 1))

    def ck(self, hours: float, value: float, *, uln: float | None = 200, low: float | None = 30, unit: str = "U/L",
           status: str = "final") -> JsonDict:
        ref = None if uln is None else (low, uln)
        return self.lab("ck", "2157-6", hours, value, unit, ref=ref, status=status)

    def iron(self, hours: float, value: float, *, code: str = "14798-3", unit: str = "umol/L",
             ref: tuple[float | None, float | None] | None = (13, 32)) -> JsonDict:
        return self.lab("iron", code, hours, value, unit, ref=ref)

    def wbc(self, hours: float, value: float, unit: str = "10*9/L") -> JsonDict:
        return self.lab("wbc", "6690-2", hours, value, unit, ref=(4, 11))

    def crp(self, hours: float, value: float) -> JsonDict:
        return self.lab("crp", "1988-5", hours, value, "mg/L", ref=(None, 5))

    def albumin(self, hours: float, value: float) -> JsonDict:
        return self.lab("albumin", "1751-7", hours, value, "g/L", ref=(35, 50))

    # -- medications ------------------------------------------------------------------------------
    def med_request(
        self,
        code: str,
        *,
        status: str,
        authored: str,
        dose: Dose | None,
        listed: bool = True,
        display: str | None = None,
        validity: tuple[str, str] | None = None,
        extra: JsonDict | None = None,
    ) -> JsonDict:
        concept = rxnorm(code, listed=listed, display=display)
        mr: JsonDict = {
            "resourceType": "MedicationRequest",
            "status": status,
            "intent": "order",
            "medicationCodeableConcept": {"coding": [concept], "text": concept["display"]},
            "subject": self.subject,
            "authoredOn": authored,
        }
        if dose is not None:
            mr["dosageInstruction"] = [dose.fhir()]
        if validity is not None:
            mr["dispenseRequest"] = {"validityPeriod": {"start": validity[0], "end": validity[1]}}
        if extra:
            mr.update(extra)
        return mr

    def med(self, code: str, *, status: str, days_ago: float, dose: Dose | None = None, **kw: Any) -> JsonDict:
        """A server-side MedicationRequest authored ``days_ago`` days before ANCHOR."""
        return self.add(self.med_request(code, status=status, authored=at(days=-days_ago), dose=dose, **kw), "mr")

    def given(self, concept: JsonDict, hours: float, *, status: str = "completed",
              dose: tuple[float, str] | None = None, route_code: str | None = None) -> JsonDict:
        """A MedicationAdministration (a dose given) at ``ANCHOR + hours``."""
        ma: JsonDict = {
            "resourceType": "MedicationAdministration",
            "status": status,
            "medicationCodeableConcept": concept,
            "subject": self.subject,
            "effectiveDateTime": at(hours),
        }
        dosage: JsonDict = {}
        if route_code:
            dosage["route"] = route(route_code)
        if dose:
            dosage["dose"] = quantity(*dose)
        if dosage:
            ma["dosage"] = dosage
        return self.add(ma, "ma")

    def stated(self, concept: JsonDict, *, status: str, start_days: float, end_days: float | None = None) -> JsonDict:
        """A MedicationStatement (home or reported medication) with its effective period."""
        period: JsonDict = {"start": at(days=start_days)}
        if end_days is not None:
            period["end"] = at(days=end_days)
        ms: JsonDict = {
            "resourceType": "MedicationStatement",
            "status": status,
            "medicationCodeableConcept": concept,
            "subject": self.subject,
            "effectivePeriod": period,
            "dateAsserted": at(days=start_days),
        }
        return self.add(ms, "ms")

    def draft(self, code: str | None, dose: Dose | None, *, name: str | None = None, listed: bool = True,
              display: str | None = None, medication: JsonDict | None = None, contained: list[JsonDict] | None = None,
              with_id: bool = True) -> JsonDict:
        """A draft MedicationRequest for ``context.draftOrders`` (authoredOn = the anchor date)."""
        head: JsonDict = {"resourceType": "MedicationRequest"}
        if with_id:
            head["id"] = f"{self.sid}-draft-{name or 'order'}"
        head["meta"] = {"tag": [SYNTHETIC_TAG]}
        if contained:
            head["contained"] = contained
        head["status"] = "draft"
        head["intent"] = "order"
        if code is not None:
            concept = rxnorm(code, listed=listed, display=display)
            head["medicationCodeableConcept"] = {"coding": [concept], "text": concept["display"]}
        elif medication is not None:
            head.update(medication)
        elif display is not None:
            head["medicationCodeableConcept"] = {"text": display}
        head["subject"] = self.subject
        head["authoredOn"] = TODAY
        if dose is not None:
            head["dosageInstruction"] = [dose.fhir()]
        self.drafts.append(head)
        return head

    def draft_raw(self, resource: JsonDict) -> JsonDict:
        self.drafts.append(resource)
        return resource

    # -- conditions and allergies -----------------------------------------------------------------
    def condition(self, system: str, code: str, *, clinical_status: str, onset: str,
                  abatement: str | None = None, display: str | None = None, text: str | None = None) -> JsonDict:
        """A Condition; ``display`` (with ``text``) names a code that a prefix row or another edition's row
        lists, as the site would write it (the code must still be one the condition tables recognise)."""
        if display is not None and VS.cause_of(system, code) is None and VS.condition(system, code) is None:
            raise KeyError(f"{system}|{code} is not recognised by the condition tables")
        code_concept: JsonDict = {"coding": [coding(system, code, display) if display is not None
                                             else condition_coding(system, code)]}
        if text is not None:
            code_concept["text"] = text
        cond: JsonDict = {
            "resourceType": "Condition",
            "clinicalStatus": {"coding": [coding("http://terminology.hl7.org/CodeSystem/condition-clinical",
                                                 clinical_status, clinical_status.title())]},
            "verificationStatus": {"coding": [coding("http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                                     "confirmed", "Confirmed")]},
            "category": [{"coding": [coding("http://terminology.hl7.org/CodeSystem/condition-category",
                                            "problem-list-item", "Problem List Item")]}],
            "code": code_concept,
            "subject": self.subject,
            "onsetDateTime": onset,
        }
        if abatement:
            cond["abatementDateTime"] = abatement
        cond["recordedDate"] = onset
        return self.add(cond, "condition")

    def drug_allergy(self, code: str, *, manifestation: tuple[str, str], recorded: str, note: str) -> JsonDict:
        concept = rxnorm(code)
        allergy: JsonDict = {
            "resourceType": "AllergyIntolerance",
            "clinicalStatus": {"coding": [coding("http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                                                 "active", "Active")]},
            "verificationStatus": {"coding": [coding(
                "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", "confirmed", "Confirmed")]},
            "type": "intolerance",
            "category": ["medication"],
            "criticality": "high",
            "code": {"coding": [concept], "text": concept["display"]},
            "patient": self.subject,
            "recordedDate": recorded,
            "reaction": [{"manifestation": [{"coding": [condition_coding(*manifestation)]}],
                          "description": note, "severity": "severe"}],
        }
        return self.add(allergy, "allergy")

    # -- output -----------------------------------------------------------------------------------
    def bundle(self) -> JsonDict:
        return {
            "resourceType": "Bundle",
            "meta": {"tag": [SYNTHETIC_TAG]},
            "type": "transaction",
            "entry": [
                {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                for r in self.resources
            ],
        }

    def request(self, draft_bundle: JsonDict | None = None) -> JsonDict:
        drafts = draft_bundle or {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": r} for r in self.drafts],
        }
        prefetch = fill_prefetch(self.resources, prefetch_templates(), self.pid)
        for key, extra in self.unsolicited.items():
            prefetch[key].setdefault("entry", []).extend({"resource": r, "search": {"mode": "match"}} for r in extra)
        return {
            "hook": "order-sign",
            "hookInstance": str(uuid.uuid5(HOOK_NAMESPACE, self.sid)),
            "context": {"userId": "Practitioner/example", "patientId": self.pid, "draftOrders": drafts},
            "prefetch": prefetch,
        }


@dataclass
class Built:
    builder: Builder
    expected: Expected
    draft_bundle: JsonDict | None = None

    @property
    def sid(self) -> str:
        return self.builder.sid

    def expected_json(self) -> JsonDict:
        e = self.expected
        unknown = set(e.criteria) - set(CRITERION_POINTS)
        if unknown:
            raise ValueError(f"{self.sid}: unknown criteria {unknown}")
        ordered = [c for c in CRITERION_POINTS if c in e.criteria]
        return {
            "id": self.sid,
            "title": self.builder.title,
            "shows": self.builder.shows,
            "indicator": e.indicator,
            "iec_points": sum(CRITERION_POINTS[c] for c in ordered),
            "criteria": ordered,
            "drugs": e.drugs,
            "evidence": e.evidence,
            "suggest_delete_draft": e.suggest_delete_draft,
            "hooks": hook_verdicts(self.sid, e),
            "notes": e.notes,
        }


# --- expected verdict of the two other hooks ---------------------------------------------------------
# The same moment seen by patient-view (chart opened: no draft, only the record's exposures count) and by
# order-select (the scenario's drafts with an id are the selection). order-select is derived: the order-sign
# card when a selected draft is a dopamine antagonist with an id (what `suggest_delete_draft` names), no card
# otherwise, and never the "check incomplete" info card. patient-view is stated per scenario, with why: restate
# it whenever a scenario's record changes (a record exposure added makes the chart show the card).
PATIENT_VIEW: dict[str, tuple[str | None, str]] = {
    "boundary-exact-thresholds": ("warning", "active risperidone in the record; CK exactly 4 x ULN"),
    "bp-separate-observations": ("critical", "active haloperidol in the record"),
    "classic-nms": ("critical", "active IM haloperidol in the record"),
    "contained-medication": ("critical", "active metoclopramide in the record (the draft's risperidone adds to it)"),
    "depot-paliperidone": ("critical", "the depot injection is within its dosing interval"),
    "dopaminergic-withdrawal": ("critical", "levodopa stopped in the record: withdrawal"),
    "early-nms": ("warning", "active olanzapine in the record; partial findings"),
    "iron-pattern": ("critical", "active risperidone in the record; iron in the NMS range"),
    "medication-reference-display": ("critical", "active metoclopramide in the record (the draft adds to it)"),
    "metoclopramide": ("critical", "active metoclopramide in the record"),
    "mimic-entered-in-error": (None, "active olanzapine, but the fever and CK were entered in error"),
    "mimic-im-ck-afebrile": ("warning", "IM haloperidol 24 h ago; CK rise without fever"),
    "mimic-old-episode": (None, "the old episode and its haloperidol lie outside the windows"),
    "mimic-sepsis-no-antipsychotic": (None, "no dopamine antagonist in the record"),
    "multiple-antagonists-lithium": ("critical", "active haloperidol and prochlorperazine in the record"),
    "no-data": (None, "no observations"),
    "past-nms-rechallenge": (None, "a previous NMS alone is not a finding; the re-challenge is the draft"),
    "resources-without-ids": ("critical", "active metoclopramide in the record (the id-less draft adds to it)"),
    "sandbox-quirks": (None, "no finding; clozapine only as the draft"),
    "units-us-conventional": ("critical", "active chlorpromazine in the record"),
    # scenarios of the clinical-reasoning work (time order, other causes), stated ahead of its merge:
    "administration-only-haloperidol": ("critical", "haloperidol given (MedicationAdministration) before onset"),
    "atc-german-record": ("critical", "quetiapine statement and risperidone administration before onset"),
    "brand-name-free-text": ("critical", "active 'Haldol' order in the record"),
    "mimic-neutropenic-fever-german": (None, "never a dopamine antagonist in the record"),
    "mimic-sepsis-haloperidol-draft": (None, "the only dopamine antagonist is the draft"),
    "other-cause-infection": ("warning", "active haloperidol in the record; infection weighed"),
    # code systems real sites use (ICD-10-GM, WHO ICD-10):
    "icd10gm-pneumonia": ("warning", "active haloperidol statement in the record; ICD-10-GM pneumonia weighed"),
    "icd10gm-past-nms-rechallenge": (None, "a previous NMS alone is not a finding; the re-challenge is the draft"),
    "who-icd10-pneumonia": ("warning", "active haloperidol in the record; WHO ICD-10 pneumonia weighed"),
    # clinical policy: episodes, reconciliation, hyperthermia without a lab, other causes as evidence
    "episode-post-surgery-metoclopramide": ("critical", "IV metoclopramide in the record before the fever"),
    "episode-alcohol-withdrawal-haloperidol": ("critical", "the haloperidol dose given before the fever"),
    "reconciliation-levodopa-stopped": ("critical", "levodopa stopped 3 days ago per the newer statement"),
    "hyperthermia-without-ck": ("critical", "active IV haloperidol in the record"),
    "modest-ck-empiric-antibiotic": ("critical", "active haloperidol in the record"),
    "olanzapine-iron-pattern": ("critical", "active olanzapine in the record"),
    "recurrence-after-coded-nms": ("critical", "active haloperidol in the record after a coded NMS"),
    # reading the record (malformations, prohibitions, duplicates, implausible values, drafts):
    "status-final-with-space": ("critical", "active haloperidol in the record; the 'Final ' statuses are read"),
    "extension-without-url": ("critical", "active haloperidol in the record; the url-less extensions are dropped"),
    "do-not-perform-haloperidol": (None, "the only haloperidol order is a prohibition (doNotPerform)"),
    "duplicate-observation-id": ("warning", "active haloperidol in the record; one febrile reading after the "
                                 "correction"),
    "implausible-temperatures": ("warning", "active haloperidol in the record; 102.9 and 4.1 Cel not used"),
    "future-authored-draft": (None, "a previous NMS alone is not a finding; the re-challenge is the draft"),
    "iv-draft-without-route": ("warning", "active haloperidol injection in the record; afebrile CK rise"),
    # scenarios of the FHIR access work (prefetch completeness, identity, fetch path):
    "german-medication-reference": ("critical", "haloperidol given and ordered, named through included Medications"),
    "german-medication-unresolved": ("critical", "risperidone statement; the haloperidol records stay unidentified"),
    "identity-by-shape": (None, "no data of this patient; the fever and CK are another patient's"),
    # site knowledge (a site's local code, read only with its site file):
    "site-local-ck-code": ("warning", "active haloperidol statement; the 32673-6 CK is not read by default"),
}


def hook_verdicts(sid: str, e: Expected) -> JsonDict:
    if sid not in PATIENT_VIEW:
        raise ValueError(f"{sid}: state its patient-view verdict in PATIENT_VIEW")
    view, why = PATIENT_VIEW[sid]
    select = e.indicator if e.suggest_delete_draft and e.indicator in ("critical", "warning") else None
    return {"patient-view": view, "patient-view-why": why, "order-select": select, "order-sign": e.indicator}


SCENARIOS: list[Callable[[], Built]] = []


def scenario(fn: Callable[[], Built]) -> Callable[[], Built]:
    SCENARIOS.append(fn)
    return fn


def delete(draft: JsonDict) -> str:
    return f"MedicationRequest/{draft['id']}"


# ---------------------------------------------------------------------------------------------------
# scenarios
# ---------------------------------------------------------------------------------------------------

ORAL = "26643006"
IM = "78421000"


@scenario
def classic_nms() -> Built:
    b = Builder("classic-nms", "Classic NMS course (haloperidol PO then IM)",
                "The full structured IEC picture from docs/clinical-reference.md 7.2, compressed into the windows: "
                "all five data-derived criteria (63 points), low iron, acute-phase labs", "male", "1984-03-02")
    b.med("310672", status="stopped", days_ago=4, dose=Dose(5, frequency=2),
          validity=(at(days=-4), at(days=-2)))
    b.med("204416", status="active", days_ago=2, dose=Dose(5, frequency=4, route=IM))
    b.baseline(t=36.8, hr=80, rr=16, bp=(120, 75))
    b.ck(-108, 120)
    b.iron(-108, 18.0)
    b.vitals(-34, t=38.4, hr=104, rr=20, bp=(120, 78))
    b.vitals(-22, t=38.9, hr=124, rr=26, bp=(165, 100))
    b.vitals(-10, t=39.4, hr=118, rr=24, bp=(158, 96))
    b.ck(-30, 1900)
    b.wbc(-30, 14.2)
    b.crp(-30, 45)
    b.albumin(-30, 30)
    b.iron(-30, 5.4)
    b.ck(-18, 6800)
    b.lab("creatinine", "2160-0", -18, 1.6, "mg/dL", ref=(0.7, 1.3))
    b.lab("potassium", "2823-3", -18, 5.4, "mmol/L", ref=(3.5, 5.0))
    b.ck(-4, 9400)
    d = b.draft("204416", Dose(5, frequency=4, route=IM), name="haloperidol")
    return Built(b, Expected(
        "critical", ["exposure", "hyperthermia", "ck", "autonomic", "hypermetabolism"], ["haloperidol"],
        "Haloperidol PO started 4 d ago (stopped, validity to -2 d), IM since -2 d (active) and drafted again: "
        "exposure 20. Fever 38.4 (-34 h), 38.9 (-22 h), 39.4 (-10 h): 3 readings > 38.0 -> 18. CK peak 9,400 U/L "
        "with referenceRange high 200 = 47 x ULN -> 10 (the IM-artefact cap does not apply: febrile). Baseline "
        "(median of the -120 h/-108 h rounds, inside 24-168 h before the first febrile reading) HR 80, RR 16, "
        "BP 120/75. BP 165/100 at -22 h = +37.5 %/+33 % (elevation) and SBP 120 -> 165 (+45), DBP 78 -> 100 (+22) "
        "within 12 h (fluctuation): 2 items -> 10. HR 124 (+55 %) and RR 26 (+62.5 %) at the same reading -> 5. "
        "Total 63 (structured maximum). Iron 18 -> 5.4 umol/L, WBC 14.2, CRP 45, albumin 30 support the pattern.",
        evidence={"tmax_cel": 39.4, "ck_peak_u_l": 9400, "ck_uln_u_l": 200, "iron_min_umol_l": 5.4,
                  "wbc_max_10e9_l": 14.2},
        suggest_delete_draft=delete(d)))


@scenario
def early_nms() -> Built:
    b = Builder("early-nms", "Early, partial NMS pattern on olanzapine",
                "Exposure with partial findings only (one febrile reading, CK 2.5 x ULN, falling iron, "
                "leukocytosis): warning, not critical", "female", "1991-07-15")
    b.med("314154", status="active", days_ago=2, dose=Dose(10))
    b.baseline(t=36.7, hr=78, rr=15, bp=(118, 74))
    b.ck(-108, 110)
    b.iron(-108, 17.0)
    b.wbc(-108, 7.4)
    b.vitals(-20, t=37.6, hr=88, rr=17, bp=(124, 78))
    b.vitals(-8, t=38.3, hr=96, rr=18, bp=(128, 80))
    b.ck(-6, 500)
    b.iron(-6, 9.0)
    b.wbc(-6, 12.1)
    d = b.draft("312077", Dose(15), name="olanzapine")
    return Built(b, Expected(
        "warning", ["exposure"], ["olanzapine"],
        "Olanzapine started 2 d ago (active) and a dose increase drafted: exposure 20. Only ONE reading > 38.0 "
        "(38.3 at -8 h; 37.6 at -20 h) -> hyperthermia not met (needs 2). CK 500 U/L with ULN 200 = 2.5 x ULN "
        "-> CK not met (needs >= 4 x). HR 96 vs baseline 78 = +23 % (< 25 %), RR 18 vs 15 = +20 % -> no "
        "hypermetabolism; BP 128/80 vs 118/74 (+8 %), changes < 25/20 mmHg -> no autonomic item. Partial findings "
        "(single fever, CK above ULN, iron 17 -> 9 umol/L = -47 % and in the NMS range <= 10, WBC 12.1 >= 11) "
        "with exposure -> warning.",
        evidence={"tmax_cel": 38.3, "ck_peak_u_l": 500, "ck_uln_u_l": 200, "iron_min_umol_l": 9.0,
                  "wbc_max_10e9_l": 12.1},
        suggest_delete_draft=delete(d)))


@scenario
def iron_pattern() -> Built:
    b = Builder("iron-pattern", "Risperidone, fever and low iron, CK never measured",
                "Critical through the iron variant (exposure + hyperthermia + iron <= 10 umol/L) when no CK exists; "
                "the card should suggest ordering CK", "male", "1979-01-20")
    b.med("312831", status="active", days_ago=10, dose=Dose(2))
    b.baseline(t=36.9, hr=76, rr=16, bp=(122, 76))
    b.vitals(-30, t=38.6, hr=90, rr=18, bp=(126, 80))
    b.vitals(-14, t=38.8, hr=92, rr=18, bp=(128, 80))
    b.iron(-12, 6.0)
    b.wbc(-12, 10.2)
    b.crp(-12, 22)
    d = b.draft("312832", Dose(3), name="risperidone")
    return Built(b, Expected(
        "critical", ["exposure", "hyperthermia"], ["risperidone"],
        "Risperidone active (10 d) + draft dose increase: exposure 20. 38.6 and 38.8 > 38.0 -> 18. No CK in the "
        "record at all -> CK criterion not met (0), but iron 6.0 umol/L is in the NMS range (<= 10), so the "
        "indicator policy's iron variant gives critical. HR 92 vs 76 = +21 %, RR +12.5 %, BP +5 % -> no other "
        "criterion. The card should suggest ordering CK (LOINC 2157-6, thresholds [suggestions] order_loinc) "
        "because none was measured in the 5-day lab window.",
        evidence={"tmax_cel": 38.8, "iron_min_umol_l": 6.0, "wbc_max_10e9_l": 10.2},
        suggest_delete_draft=delete(d)))


@scenario
def mimic_sepsis_no_antipsychotic() -> Built:
    b = Builder("mimic-sepsis-no-antipsychotic", "Sepsis mimic without any dopamine antagonist",
                "Fever, leukocytosis, low iron and tachycardia/tachypnoea but no exposure: no card at all",
                "female", "1962-05-09")
    b.condition(ICD10CM, "A41.9", clinical_status="active", onset=at(-30))
    b.med(ACETAMINOPHEN_500[0], listed=False, display=ACETAMINOPHEN_500[1], status="active", days_ago=1.25,
          dose=Dose(1000, frequency=4, as_needed=True))
    b.baseline(t=36.8, hr=78, rr=16, bp=(118, 72))
    b.vitals(-40, t=39.0, hr=112, rr=24, bp=(110, 66))
    b.vitals(-26, t=39.2, hr=118, rr=26, bp=(102, 60))
    b.vitals(-12, t=39.1, hr=114, rr=25, bp=(104, 62))
    b.wbc(-24, 18.0)
    b.iron(-24, 6.0)
    b.ck(-24, 95)
    b.crp(-24, 180)
    b.draft(None, Dose(4.5, unit="g", frequency=4, route="47625008"), name="antibiotic",
            display="piperacillin 4 G / tazobactam 0.5 G Injection (text only, not coded)")
    return Built(b, Expected(
        None, ["hyperthermia", "hypermetabolism"], [],
        "No dopamine antagonist in the draft (piperacillin/tazobactam, text only, deliberately uncoded), the "
        "active orders (acetaminophen) or recent history, and no dopaminergic drug stopped -> exposure not met "
        "-> no card, whatever else is abnormal. From data alone: 39.0/39.2/39.1 -> hyperthermia 18; HR 118 vs 78 "
        "(+51 %) with RR 26 vs 16 (+62.5 %) at -26 h -> hypermetabolism 5 (total 23, never shown). BP falls "
        "(sepsis), no elevation or >= 25/20 mmHg swing. Iron 6.0 and WBC 18 are acute-phase findings, "
        "non-specific (docs/clinical-reference.md 0.3); CK 95 with ULN 200 is normal.",
        evidence={}))


@scenario
def mimic_im_ck_afebrile() -> Built:
    b = Builder("mimic-im-ck-afebrile", "IM haloperidol yesterday, CK 900, afebrile",
                "Injection-related CK rise without fever: warning at most, never critical", "male", "1995-10-02")
    b.med("1719646", status="completed", days_ago=1, dose=Dose(5, route=IM, text="5 mg IM once"))
    b.baseline(t=36.8, hr=82, rr=16, bp=(124, 78))
    b.vitals(-30, t=36.9, hr=82, rr=16, bp=(124, 78))
    b.vitals(-16, t=37.2, hr=84, rr=16, bp=(126, 80))
    b.vitals(-4, t=37.4, hr=80, rr=15, bp=(122, 76))
    b.ck(-12, 900)
    d = b.draft("204416", Dose(5, route=IM, as_needed=True, text="5 mg IM as needed for agitation"),
                name="haloperidol")
    return Built(b, Expected(
        "warning", ["exposure", "ck"], ["haloperidol"],
        "IM haloperidol 24 h ago (completed single dose) + draft IM haloperidol: exposure 20. CK 900 U/L with ULN "
        "200 = 4.5 x ULN -> CK criterion met by the numbers (10; total 30). Every temperature < 37.5 (max 37.4) "
        "-> no hyperthermia, and vitals are flat. A CK rise within 72 h after an IM dopamine antagonist without "
        "fever is treated as an injection artefact ([indicator] im_ck_artefact_hours = 72, Mayo [S11]) and never "
        "raises more than a warning; the card should say so and suggest repeating CK. Must never be critical.",
        evidence={"tmax_cel": 37.4, "ck_peak_u_l": 900, "ck_uln_u_l": 200},
        suggest_delete_draft=delete(d)))


@scenario
def mimic_old_episode() -> Built:
    b = Builder("mimic-old-episode", "NMS-like episode 60 days ago, well now",
                "Old fever/CK/antipsychotic data outside every window and no coded NMS history: no card",
                "female", "1970-12-11")
    b.med("310672", status="stopped", days_ago=70, dose=Dose(5, frequency=2),
          validity=(at(days=-70), at(days=-60)))
    b.vitals(-60 * 24 - 8, t=39.6, hr=122, rr=24, bp=(160, 98))
    b.vitals(-60 * 24, t=40.1, hr=128, rr=26, bp=(166, 102))
    b.ck(-60 * 24 - 2, 12000)
    b.wbc(-60 * 24 - 2, 16.0)
    b.baseline(t=36.7, hr=74, rr=15, bp=(116, 72))
    b.vitals(-30, t=36.8, hr=76, rr=15, bp=(118, 74))
    b.vitals(-6, t=37.0, hr=78, rr=16, bp=(120, 74))
    b.ck(-24, 150)
    b.iron(-24, 16.0)
    b.draft("312744", Dose(25, frequency=2), name="quetiapine")
    return Built(b, Expected(
        None, ["exposure"], [],
        "The draft quetiapine is itself a dopamine antagonist -> exposure 20 (the only criterion). The fever "
        "39.6/40.1, CK 12,000 and haloperidol (stopped 60 d ago, oral, not LAI) lie outside the 72 h acute "
        "window, the 5 d lab window and the 72 h exposure window. Now afebrile (max 37.0), CK 150 (ULN 200), "
        "iron 16. The old episode was never coded (no G21.0 Condition, no AllergyIntolerance), so it is not a "
        "'history of NMS' either: exposure alone is not a partial pattern -> no card.",
        evidence={}))


@scenario
def mimic_entered_in_error() -> Built:
    b = Builder("mimic-entered-in-error", "Alarming values that were entered in error",
                "Observations with status entered-in-error must be ignored (docs/clinical-reference.md 0.6): no card",
                "male", "1988-04-23")
    b.med("314154", status="active", days_ago=14, dose=Dose(10))
    b.baseline(t=36.8, hr=78, rr=16, bp=(122, 78))
    b.vitals(-30, t=36.9, hr=80, rr=16, bp=(122, 78))
    b.temp(at(-20), 39.5, status="entered-in-error")
    b.temp(at(-12), 39.5, status="entered-in-error")
    b.ck(-16, 5000, status="entered-in-error")
    b.ck(-15, 140)
    b.vitals(-10, t=37.0, hr=82, rr=16, bp=(124, 78))
    b.draft("314154", Dose(10), name="olanzapine")
    return Built(b, Expected(
        None, ["exposure"], [],
        "Olanzapine active + draft: exposure 20. The two 39.5 degC readings and CK 5,000 U/L are status "
        "entered-in-error and must be ignored (only final/amended/corrected count). The remaining final data "
        "are normal (max 37.0 degC, CK 140 with ULN 200, flat HR/RR/BP) -> exposure alone, no partial finding -> "
        "no card.",
        evidence={}))


@scenario
def units_us_conventional() -> Built:
    b = Builder("units-us-conventional", "US conventional and SI-kat units",
                "Temperatures in [degF], CK in ukat/L with a ukat/L reference range, iron 2498-4 in ug/dL, WBC in "
                "10*3/uL: values must be converted before the thresholds apply", "male", "1976-08-30")
    b.med("991194", status="active", days_ago=4, dose=Dose(25, frequency=3))
    b.baseline(t=98.4, t_unit="[degF]", hr=78, rr=16, bp=(120, 76))
    b.vitals(-28, t=102.2, t_unit="[degF]", hr=86, rr=17, bp=(124, 78))
    b.vitals(-12, t=103.1, t_unit="[degF]", hr=88, rr=17, bp=(126, 78))
    b.ck(-20, 150, uln=3.3, low=0.5, unit="ukat/L")
    b.iron(-20, 28, code="2498-4", unit="ug/dL", ref=(60, 170))
    b.wbc(-20, 11.8, unit="10*3/uL")
    d = b.draft("991336", Dose(50, frequency=3), name="chlorpromazine")
    return Built(b, Expected(
        "critical", ["exposure", "hyperthermia", "ck"], ["chlorpromazine"],
        "Chlorpromazine active (4 d) + draft dose increase: exposure 20. 102.2 [degF] = 39.0 degC and 103.1 "
        "[degF] = 39.5 degC ((x-32)*5/9) -> hyperthermia 18. CK 150 ukat/L = 9,000 U/L (x 60); referenceRange "
        "high 3.3 ukat/L = 198 U/L -> 45.5 x ULN -> 10. Iron 28 ug/dL x 10 / 55.845 = 5.01 -> 5.0 umol/L (NMS "
        "range). WBC 11.8 10*3/uL = 11.8 x 10^9/L. HR 88 vs 78 (+13 %), BP +5 % -> nothing else. Total 48.",
        evidence={"tmax_cel": 39.5, "ck_peak_u_l": 9000, "ck_uln_u_l": 198, "iron_min_umol_l": 5.0,
                  "wbc_max_10e9_l": 11.8},
        suggest_delete_draft=delete(d)))


@scenario
def depot_paliperidone() -> Built:
    b = Builder("depot-paliperidone", "Paliperidone palmitate depot 21 days ago",
                "Long-acting injectable exposure outside 72 h but inside the 90-day depot window; CK ULN from the "
                "female fallback (no referenceRange)", "female", "1983-02-14")
    b.med("858054", status="completed", days_ago=21,
          dose=Dose(156, route=IM, text="156 mg IM once (monthly depot)"))
    b.baseline(t=36.8, hr=76, rr=16, bp=(118, 74))
    b.vitals(-26, t=38.5, hr=88, rr=18, bp=(122, 76))
    b.vitals(-10, t=39.1, hr=90, rr=18, bp=(124, 78))
    b.ck(-16, 1408, uln=None)
    d = b.draft("312831", Dose(2), name="risperidone")
    return Built(b, Expected(
        "critical", ["exposure", "hyperthermia", "ck"], ["paliperidone", "risperidone"],
        "Depot window: paliperidone palmitate 156 MG/ML prefilled syringe (RxNorm 858054, long_acting_injectable "
        "= yes) given 21 d ago (MedicationRequest completed) is outside the 72 h window but inside depot_window_days "
        "= 90 -> exposure 20 (the oral risperidone draft also counts on its own). 38.5 and 39.1 -> 18. CK 1,408 "
        "U/L has NO referenceRange: female fallback ULN 176 U/L -> exactly 8.0 x ULN -> 10. HR 90 vs 76 (+18 %), "
        "RR +12.5 %, BP +5 % -> nothing else. Total 48. The card must name paliperidone (the depot still acting) "
        "as well as the drafted risperidone (paliperidone is its active metabolite).",
        evidence={"tmax_cel": 39.1, "ck_peak_u_l": 1408, "ck_uln_u_l": 176},
        suggest_delete_draft=delete(d)))


@scenario
def metoclopramide() -> Built:
    b = Builder("metoclopramide", "Metoclopramide (antiemetic D2 antagonist)",
                "Non-antipsychotic dopamine antagonists count as exposure", "female", "1958-06-01")
    b.med("311666", status="active", days_ago=2.5, dose=Dose(10, frequency=4))
    b.baseline(t=36.7, hr=80, rr=16, bp=(126, 78))
    b.vitals(-24, t=38.7, hr=90, rr=18, bp=(128, 80))
    b.vitals(-8, t=39.0, hr=92, rr=18, bp=(130, 80))
    b.ck(-12, 1000)
    d = b.draft("311666", Dose(10, frequency=4), name="metoclopramide")
    return Built(b, Expected(
        "critical", ["exposure", "hyperthermia", "ck"], ["metoclopramide"],
        "Metoclopramide 10 mg qid active (2.5 d) and drafted again: exposure 20 (antiemetic-d2 class). 38.7 and "
        "39.0 -> 18. CK 1,000 U/L with ULN 200 = 5 x ULN -> 10. HR 92 vs 80 (+15 %), BP +3 % -> nothing else. "
        "Total 48.",
        evidence={"tmax_cel": 39.0, "ck_peak_u_l": 1000, "ck_uln_u_l": 200},
        suggest_delete_draft=delete(d)))


@scenario
def dopaminergic_withdrawal() -> Built:
    b = Builder("dopaminergic-withdrawal", "Levodopa stopped 2 days ago (parkinsonism-hyperpyrexia)",
                "Dopaminergic withdrawal counts as IEC exposure without any antagonist; no delete suggestion",
                "male", "1949-09-17")
    b.condition(ICD10CM, "G20.A1", clinical_status="active", onset=at(days=-8 * 365))
    b.med("197443", status="stopped", days_ago=180, dose=Dose(1, unit="{tbl}", frequency=3,
                                                               text="1 tablet three times daily"),
          validity=(at(days=-180), at(days=-2)))
    b.baseline(t=36.6, hr=74, rr=16, bp=(128, 78))
    b.vitals(-30, t=38.6, hr=88, rr=18, bp=(132, 80))
    b.vitals(-12, t=39.2, hr=90, rr=18, bp=(134, 82))
    b.ck(-18, 1200)
    b.draft(ACETAMINOPHEN_500[0], Dose(1000, frequency=4, as_needed=True), name="acetaminophen", listed=False,
            display=ACETAMINOPHEN_500[1])
    return Built(b, Expected(
        "critical", ["exposure", "hyperthermia", "ck"], ["levodopa"],
        "Carbidopa/levodopa (RxNorm 197443) MedicationRequest status stopped with dispenseRequest.validityPeriod."
        "end 2 d ago -> dopaminergic withdrawal inside withdrawal_window_days = 7 -> exposure 20 (IEC 'or "
        "dopamine agonist withdrawal'). No dopamine antagonist anywhere. 38.6 and 39.2 -> 18. CK 1,200 U/L with "
        "ULN 200 = 6 x ULN -> 10. HR 90 vs 74 (+22 %) -> no hypermetabolism. Total 48. The draft (acetaminophen, "
        "not listed in the TSVs; code from the sandbox's Synthea data) is not a dopamine antagonist, so there is "
        "no delete suggestion; the card should suggest restoring dopaminergic therapy.",
        evidence={"tmax_cel": 39.2, "ck_peak_u_l": 1200, "ck_uln_u_l": 200}))


@scenario
def past_nms_rechallenge() -> Built:
    b = Builder("past-nms-rechallenge", "Haloperidol re-challenge after a past NMS episode",
                "History of NMS (resolved G21.0 Condition, AllergyIntolerance with manifestation 15244003) plus a "
                "draft dopamine antagonist: warning with normal vitals", "male", "1969-03-27")
    b.condition(ICD10CM, "G21.0", clinical_status="resolved", onset=at(days=-730), abatement=at(days=-716))
    b.drug_allergy("5093", manifestation=(SNOMED, "15244003"), recorded=at(days=-720),
                   note="Neuroleptic malignant syndrome after IM haloperidol")
    b.baseline(t=36.7, hr=72, rr=14, bp=(122, 78))
    b.vitals(-20, t=36.8, hr=74, rr=15, bp=(124, 78))
    b.vitals(-4, t=36.9, hr=76, rr=15, bp=(122, 76))
    b.ck(-20, 130)
    d = b.draft("310672", Dose(5, frequency=2), name="haloperidol")
    return Built(b, Expected(
        "warning", ["exposure"], ["haloperidol"],
        "The draft haloperidol is exposure (20). Vitals and CK (130, ULN 200) are normal, so no acute criterion. "
        "The warning comes from the history rule: Condition G21.0 (clinicalStatus resolved, onset 2 y ago) and an "
        "AllergyIntolerance to haloperidol (RxNorm 5093) with reaction manifestation SNOMED 15244003 -> draft "
        "dopamine antagonist after past NMS = warning (recurrence 15-20 % [S30]; re-challenge only >= 2 weeks after "
        "resolution, lower potency, slow titration [S28][S31]).",
        evidence={},
        suggest_delete_draft=delete(d)))


@scenario
def contained_medication() -> Built:
    b = Builder("contained-medication", "Draft order referencing a contained Medication",
                "medicationReference '#med1' must be resolved to the contained risperidone Medication; it is the "
                "dopamine antagonist named risperidone", "female", "1992-11-05")
    b.med("311666", status="active", days_ago=3, dose=Dose(10, frequency=3))
    b.baseline(t=36.8, hr=78, rr=16, bp=(118, 76))
    b.vitals(-28, t=38.4, hr=86, rr=17, bp=(120, 76))
    b.vitals(-9, t=38.9, hr=88, rr=18, bp=(122, 78))
    b.ck(-14, 900)
    med = {"resourceType": "Medication", "id": "med1", "code": {"coding": [rxnorm("312830")], "text":
           rxnorm("312830")["display"]}}
    d = b.draft(None, Dose(1, frequency=2), name="risperidone", contained=[med],
                medication={"medicationReference": {"reference": "#med1"}})
    return Built(b, Expected(
        "critical", ["exposure", "hyperthermia", "ck"], ["risperidone"],
        "The draft's medicationReference '#med1' points to a contained Medication coded RxNorm 312830 "
        "(risperidone 1 MG Oral Tablet); it is the only source of the name risperidone, so a service that does not "
        "resolve contained references cannot name it. Exposure before onset: metoclopramide active for 3 days "
        "(time order: a draft alone never explains findings already there) -> 20. 38.4 and 38.9 -> 18. "
        "CK 900 with ULN 200 = 4.5 x ULN "
        "-> 10 (no IM route, no artefact). Vitals otherwise flat. Total 48.",
        evidence={"tmax_cel": 38.9, "ck_peak_u_l": 900, "ck_uln_u_l": 200},
        suggest_delete_draft=delete(d)))


@scenario
def medication_reference_display() -> Built:
    b = Builder("medication-reference-display", "Draft order referencing a server-side Medication",
                "A medicationReference to a server-side Medication with only a display (3.0b example shape): the "
                "Medication is on the FHIR server, never in prefetch", "male", "1981-06-19")
    med = b.add({"resourceType": "Medication", "code": {"coding": [rxnorm("204416")],
                 "text": rxnorm("204416")["display"]}, "status": "active"}, "medication")
    b.med("311666", status="active", days_ago=3, dose=Dose(10, frequency=3))
    b.baseline(t=36.8, hr=80, rr=16, bp=(124, 78))
    b.vitals(-26, t=38.5, hr=90, rr=18, bp=(126, 80))
    b.vitals(-8, t=39.0, hr=92, rr=18, bp=(128, 80))
    b.ck(-14, 1200)
    d = b.draft(None, Dose(5, frequency=4, route=IM), name="haloperidol",
                medication={"medicationReference": {"reference": f"Medication/{med['id']}",
                                                    "display": "haloperidol 5 MG/ML Injectable Solution"}})
    return Built(b, Expected(
        "critical", ["exposure", "hyperthermia", "ck"], ["haloperidol"],
        f"The draft references Medication/{med['id']} (RxNorm 204416 haloperidol 5 MG/ML Injectable Solution) "
        "with a display. The Medication has no patient link, so no prefetch template returns it: the service "
        "resolves it by reading it from the FHIR server or, prefetch-only, by matching the display name "
        "'haloperidol' (the only source of that name). Exposure before onset: metoclopramide active for 3 days "
        "(time order: the draft alone never explains findings already there) -> 20. 38.5 and 39.0 -> 18. "
        "CK 1,200 with ULN 200 = "
        "6 x ULN -> 10. Total 48.",
        evidence={"tmax_cel": 39.0, "ck_peak_u_l": 1200, "ck_uln_u_l": 200},
        suggest_delete_draft=delete(d)))


@scenario
def sandbox_quirks() -> Built:
    b = Builder("sandbox-quirks", "draftOrders exactly as the reference sandbox sends them",
                "Bundle without type, category as an object, '{pill}' dose, a MedicationRequest without "
                "medication[x] and intent, and a NutritionOrder: must not crash", "male", "1976-07-07")
    b.baseline(t=36.8, hr=76, rr=16, bp=(120, 76))
    b.vitals(-24, t=36.9, hr=78, rr=16, bp=(122, 78))
    b.vitals(-6, t=37.0, hr=76, rr=15, bp=(120, 76))
    subject = {"reference": f"Patient/{b.pid}"}
    clozapine = rxnorm("197535")
    sandbox_mr = {
        "resourceType": "MedicationRequest",
        "id": "request-123",
        "status": "draft",
        "subject": subject,
        "authoredOn": TODAY,
        "dosageInstruction": [{
            "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
            "doseAndRate": [{"doseQuantity": {"value": 1, "system": UCUM, "code": "{pill}"}}],
        }],
        "dispenseRequest": {"expectedSupplyDuration": {"value": 30, "unit": "days", "system": UCUM, "code": "d"}},
        "intent": "order",
        "category": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/medicationrequest-category",
                                 "code": "community"}]},
        "medicationCodeableConcept": {
            "text": "Clozapine 100 MG Oral Tablet",
            "coding": [{"display": "Clozapine 100 MG Oral Tablet", "system": RXNORM, "code": clozapine["code"]}],
        },
    }
    empty_mr = {"resourceType": "MedicationRequest", "id": "sandbox-quirks-draft-empty", "status": "draft",
                "subject": subject, "authoredOn": TODAY}
    diet = {
        "resourceType": "NutritionOrder",
        "id": "sandbox-quirks-draft-diet",
        "status": "draft",
        "intent": "order",
        "patient": subject,
        "dateTime": TODAY,
        "oralDiet": {"type": [{"coding": [{"system": SNOMED, "code": "226211001", "display": "Pureed diet"}],
                               "text": "Pureed diet"}]},
    }
    draft_bundle = {"resourceType": "Bundle", "entry": [{"resource": r} for r in (sandbox_mr, empty_mr, diet)]}
    for r in (sandbox_mr, empty_mr, diet):
        b.draft_raw(r)
    return Built(b, Expected(
        None, ["exposure"], [],
        "draftOrders copied from the real sandbox request (datasets/sandbox-requests/"
        "sandbox-order-sign-request.json): no Bundle.type, id request-123, category as a single object (invalid "
        "R4), doseQuantity code {pill} without unit, RxNorm 197535 clozapine 100 MG Oral Tablet; plus a "
        "MedicationRequest with neither medication[x] nor intent (sandbox before a pick) and a NutritionOrder "
        "(pureed diet, SNOMED 226211001 from the hook-library example). Clozapine draft -> exposure 20. Vitals "
        "normal, no labs -> exposure alone -> no card. The service must answer 200 with no card, not 400/500.",
        evidence={}), draft_bundle=draft_bundle)


@scenario
def multiple_antagonists_lithium() -> Built:
    b = Builder("multiple-antagonists-lithium", "Haloperidol + prochlorperazine + lithium",
                "Several concurrent dopamine antagonists plus lithium as a risk modifier; CK ULN from the male "
                "fallback (no referenceRange)", "male", "1966-02-08")
    b.med("310672", status="active", days_ago=5, dose=Dose(5, frequency=2))
    b.med("198365", status="active", days_ago=3, dose=Dose(10, frequency=3, as_needed=True))
    b.med("42351", status="active", days_ago=60, dose=Dose(300, frequency=3))
    b.baseline(t=36.8, hr=78, rr=16, bp=(124, 78))
    b.vitals(-30, t=38.6, hr=90, rr=18, bp=(128, 80))
    b.vitals(-6, t=39.3, hr=92, rr=19, bp=(130, 82))
    b.ck(-18, 3360, uln=None)
    d = b.draft("314035", Dose(10, frequency=2), name="haloperidol")
    return Built(b, Expected(
        "critical", ["exposure", "hyperthermia", "ck"], ["haloperidol", "prochlorperazine", "lithium"],
        "Haloperidol (active 5 d, draft dose increase to 10 mg) and prochlorperazine (active 3 d) are both "
        "dopamine antagonists: exposure 20, and the card must name both (multiple concurrent antagonists is a "
        "risk factor). Lithium carbonate (RxNorm 42351, risk-modifiers.tsv) is a co-risk, not an exposure: the "
        "card should name it (consider stopping, [S28]). 38.6 and 39.3 -> 18. CK 3,360 U/L has NO referenceRange: "
        "male fallback ULN 336 -> exactly 10 x ULN -> 10. HR 92 vs 78 (+18 %) -> nothing else. Total 48.",
        evidence={"tmax_cel": 39.3, "ck_peak_u_l": 3360, "ck_uln_u_l": 336},
        suggest_delete_draft=delete(d)))


@scenario
def bp_separate_observations() -> Built:
    b = Builder("bp-separate-observations", "Blood pressure as separate systolic/diastolic Observations",
                "Autonomic lability computed from 8480-6 / 8462-4 Observations without a panel (58 points)",
                "female", "1987-09-30")
    b.med("310672", status="active", days_ago=4, dose=Dose(5, frequency=2))
    b.baseline(t=36.8, hr=80, rr=16, bp=(120, 75), separate_bp=True)
    b.vitals(-30, t=37.4, hr=84, rr=17, bp=(122, 76), separate_bp=True)
    b.vitals(-18, t=38.7, hr=86, rr=17, bp=(160, 98), separate_bp=True)
    b.vitals(-6, t=38.9, hr=88, rr=18, bp=(156, 96), separate_bp=True)
    b.ck(-12, 1000)
    d = b.draft("310672", Dose(5, frequency=2), name="haloperidol")
    return Built(b, Expected(
        "critical", ["exposure", "hyperthermia", "ck", "autonomic"], ["haloperidol"],
        "Haloperidol active + draft: exposure 20. 38.7 (-18 h) and 38.9 (-6 h) -> 18 (37.4 at -30 h is not "
        "febrile). CK 1,000 with ULN 200 = 5 x ULN -> 10. BP only as separate 8480-6/8462-4 Observations: "
        "baseline 120/75 (-120 h/-108 h, inside 24-168 h before the first febrile reading at -18 h); SBP 160 = "
        "+33 % (elevation); SBP 122 -> 160 (+38) and DBP 76 -> 98 (+22) within 12 h (fluctuation) -> 2 items -> "
        "10. HR 88 vs 80 (+10 %), RR 18 vs 16 (+12.5 %) -> no hypermetabolism. Total 58.",
        evidence={"tmax_cel": 38.9, "ck_peak_u_l": 1000, "ck_uln_u_l": 200},
        suggest_delete_draft=delete(d)))


@scenario
def no_data() -> Built:
    b = Builder("no-data", "Draft aripiprazole for a patient without any data",
                "Empty prefetch searches (Bundles with total 0) must be handled: no card, no error", "female",
                "2001-04-04")
    b.draft("349545", Dose(10), name="aripiprazole")
    return Built(b, Expected(
        None, ["exposure"], [],
        "Patient with no Observations, MedicationRequests, Conditions or AllergyIntolerances; every prefetch "
        "search is an empty searchset Bundle (total 0) and the Patient read succeeds. The draft aripiprazole is "
        "exposure (20) but nothing else can be assessed -> no card (and no 412: the prefetch is complete).",
        evidence={}))


@scenario
def resources_without_ids() -> Built:
    b = Builder("resources-without-ids", "Draft orders without resource ids",
                "draftOrders resources may lack an id (logical model id-expectation optional): critical card, but "
                "the delete suggestion cannot carry a resourceId", "male", "1993-12-12")
    b.med("311666", status="active", days_ago=3, dose=Dose(10, frequency=3))
    b.baseline(t=36.8, hr=78, rr=16, bp=(120, 76))
    b.vitals(-26, t=38.6, hr=88, rr=17, bp=(122, 78))
    b.vitals(-7, t=39.0, hr=90, rr=18, bp=(124, 78))
    b.ck(-12, 1000)
    b.draft("314154", Dose(10), with_id=False)
    b.draft_raw({
        "resourceType": "ServiceRequest",
        "meta": {"tag": [SYNTHETIC_TAG]},
        "status": "draft",
        "intent": "order",
        "code": {"coding": [loinc("2157-6")], "text": loinc("2157-6")["display"]},
        "subject": b.subject,
        "authoredOn": TODAY,
    })
    return Built(b, Expected(
        "critical", ["exposure", "hyperthermia", "ck"], ["olanzapine"],
        "The id-less draft olanzapine 10 MG (RxNorm 314154) adds to metoclopramide active for 3 days (the exposure "
        "before onset; time order: a draft alone never explains findings already there) -> exposure 20; a second "
        "id-less draft (ServiceRequest for CK) sits next to it. 38.6 and 39.0 -> 18. CK 1,000 with ULN 200 "
        "= 5 x ULN -> 10. Total 48. A delete action needs a resourceId (CDS Hooks 'Type/id'), so the card must "
        "offer no delete suggestion (suggest_delete_draft null) and must not crash or invent an id.",
        evidence={"tmax_cel": 39.0, "ck_peak_u_l": 1000, "ck_uln_u_l": 200}))


@scenario
def boundary_exact_thresholds() -> Built:
    b = Builder("boundary-exact-thresholds", "Values exactly on the thresholds",
                "Hyperthermia is strictly > 38.0 (38.0 and 100.4 [degF] do not count); CK >= 4 x ULN, HR >= +25 % "
                "and RR >= +50 % count at equality", "male", "1980-01-31")
    b.med("312830", status="active", days_ago=6, dose=Dose(1, frequency=2))
    b.baseline(t=36.8, hr=80, rr=16, bp=(120, 80))
    b.vitals(-30, t=38.0, hr=90, rr=18, bp=(128, 82))
    b.vitals(-16, t=100.4, t_unit="[degF]", hr=100, rr=24, bp=(140, 90))
    b.vitals(-4, t=38.0, hr=96, rr=20, bp=(134, 86))
    b.ck(-10, 800)
    d = b.draft("312831", Dose(2, frequency=2), name="risperidone")
    return Built(b, Expected(
        "warning", ["exposure", "ck", "hypermetabolism"], ["risperidone"],
        "Risperidone active + draft: exposure 20. Temperatures 38.0, 100.4 [degF] (= 38.0 degC after the 3-decimal "
        "conversion) and 38.0: none is > 38.0 (strict) -> hyperthermia NOT met. CK 800 with ULN 200 = exactly "
        "4.0 x ULN -> met (>=) -> 10. Baseline (afebrile: 24-168 h before the window start) HR 80, RR 16, BP "
        "120/80; at -16 h HR 100 = exactly +25 % and RR 24 = exactly +50 % -> hypermetabolism met (>=, "
        "docs/clinical-reference.md 1.3) -> 5. BP 140/90 = +16.7 %/+12.5 %, largest 24 h swing 12/8 mmHg -> "
        "no autonomic item. Total 35; exposure + CK without hyperthermia -> warning, not critical.",
        evidence={"tmax_cel": 38.0, "ck_peak_u_l": 800, "ck_uln_u_l": 200},
        suggest_delete_draft=delete(d)))


# ---------------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------------



# --- time order, other causes, every record of exposure ----------------------------------------------


@scenario
def mimic_sepsis_haloperidol_draft() -> Built:
    b = Builder("mimic-sepsis-haloperidol-draft", "Sepsis mimic with a haloperidol draft (draft-only exposure)",
                "Septic, febrile, iron 6 umol/L and CRP 180 before any dopamine antagonist; haloperidol drafted for "
                "delirium: the draft cannot explain findings already there, no card", "female", "1962-05-09")
    b.condition(ICD10CM, "A41.9", clinical_status="active", onset=at(-30))
    b.med(ACETAMINOPHEN_500[0], listed=False, display=ACETAMINOPHEN_500[1], status="active", days_ago=1.25,
          dose=Dose(1000, frequency=4, as_needed=True))
    b.given({"coding": [atc("J01CR05", "piperacillin and beta-lactamase inhibitor")],
             "text": "piperacillin/tazobactam 4.5 g IV"}, -36, route_code="47625008")
    b.baseline(t=36.8, hr=78, rr=16, bp=(118, 72))
    b.vitals(-40, t=39.0, hr=112, rr=24, bp=(110, 66))
    b.vitals(-26, t=39.2, hr=118, rr=26, bp=(102, 60))
    b.vitals(-12, t=39.1, hr=114, rr=25, bp=(104, 62))
    b.wbc(-24, 18.0)
    b.iron(-24, 6.0)
    b.ck(-24, 100)
    b.crp(-24, 180)
    b.draft("5093", Dose(2.5, frequency=2), name="haloperidol")
    return Built(b, Expected(
        None, ["hyperthermia", "hypermetabolism"], [],
        "Time order (deliberate change: this picture with a haloperidol draft used to give a critical card). "
        "Fever 39.0/39.2/39.1 from -40 h, iron 6.0 (NMS range), WBC 18, CRP 180, CK 100 (0.5 x ULN), sepsis "
        "(A41.9) on piperacillin/tazobactam: every finding precedes the only dopamine antagonist, the unsigned "
        "draft. The draft never explains findings that precede it -> exposure not met (0), no warning, no "
        "critical card; docs/clinical-rules.md (indicator policy) explains why no info card either.",
        evidence={}))


@scenario
def mimic_neutropenic_fever_german() -> Built:
    b = Builder("mimic-neutropenic-fever-german", "Kidney transplant, neutropenic fever, German ATC-coded record",
                "Neutropenic fever on cefotaxime, metronidazole and amphotericin B, serum iron 12 ug/dL, no CK, no "
                "dopamine antagonist ever given; haloperidol drafted: no card", "male", "1958-03-14")
    b.condition(SNOMED, "409089005", clinical_status="active", onset=at(-46))
    for hours in (-48, -36, -24, -12):
        b.given({"coding": [atc("J01DD01", "Cefotaxim", system=BFARM_ATC)], "text": "Cefotaxim 2 g i.v."}, hours,
                route_code="47625008")
        b.given({"coding": [atc("J01XD01", "Metronidazol", system=BFARM_ATC)], "text": "Metronidazol 500 mg i.v."},
                hours + 1, route_code="47625008")
    b.given({"coding": [atc("J02AA01", "Amphotericin B", system=BFARM_ATC)], "text": "Amphotericin B liposomal"},
            -20, route_code="47625008")
    b.baseline(t=36.9, hr=76, rr=15, bp=(128, 80))
    b.vitals(-46, t=38.8, hr=104, rr=20, bp=(118, 70))
    b.vitals(-30, t=39.3, hr=110, rr=22, bp=(112, 68))
    b.vitals(-10, t=38.9, hr=106, rr=21, bp=(116, 70))
    b.iron(-20, 12.0, code="2498-4", unit="ug/dL", ref=(59, 158))
    b.wbc(-20, 0.4)
    b.crp(-20, 160)
    b.draft(None, Dose(1, frequency=2), name="haloperidol", display="Haloperidol 1 mg Tablette")
    return Built(b, Expected(
        None, ["hyperthermia"], [],
        "The German hospital test record of the time-order work, rebuilt from its description: kidney transplant, "
        "febrile neutropenia (SNOMED 409089005) with fever 38.8/39.3/38.9 from -46 h on cefotaxime, "
        "metronidazole (ATC, BfArM "
        "system) and amphotericin B, serum iron 12 ug/dL (2.1 umol/L, NMS range), no CK, never a dopamine "
        "antagonist. The German-named draft 'Haloperidol 1 mg Tablette' is recognised but is the only exposure and "
        "comes after every finding -> no card (used to be critical). Infection evidence is listed if a card is "
        "ever shown.", evidence={}))


@scenario
def administration_only_haloperidol() -> Built:
    b = Builder("administration-only-haloperidol", "Haloperidol given (MedicationAdministration only)",
                "Doses given count like orders: haloperidol IM administrations before a febrile CK rise, no "
                "MedicationRequest in the record: critical", "male", "1979-08-30")
    concept = {"coding": [rxnorm("204416")], "text": "haloperidol 5 mg/mL injection"}
    for hours in (-62, -50, -38):
        b.given(concept, hours, dose=(5, "mg"), route_code=IM)
    b.given(concept, -26, status="not-done", dose=(5, "mg"), route_code=IM)
    b.given(concept, -14, status="entered-in-error", dose=(5, "mg"), route_code=IM)
    b.baseline(t=36.8, hr=80, rr=16, bp=(122, 76))
    b.vitals(-30, t=38.6, hr=88, rr=17, bp=(124, 78))
    b.vitals(-9, t=39.2, hr=90, rr=18, bp=(126, 80))
    b.ck(-12, 2400)
    d = b.draft("204416", Dose(5, frequency=2, route=IM), name="haloperidol")
    return Built(b, Expected(
        "critical", ["exposure", "hyperthermia", "ck"], ["haloperidol"],
        "Three completed MedicationAdministrations of haloperidol 5 mg IM at -62/-50/-38 h (a not-done and an "
        "entered-in-error one are ignored), no MedicationRequest: exposure before onset (first febrile reading "
        "-30 h) -> 20. 38.6 and 39.2 -> 18. CK 2,400 with ULN 200 = 12 x ULN -> 10 (febrile, so no IM artefact). "
        "Total 48; the draft adds to it and may be removed.",
        evidence={"tmax_cel": 39.2, "ck_peak_u_l": 2400, "ck_uln_u_l": 200}, suggest_delete_draft=delete(d)))


@scenario
def atc_german_record() -> Built:
    b = Builder("atc-german-record", "German record: ATC codes, German names, real-data units",
                "Quetiapin (MedicationStatement) and Risperidon (MedicationAdministration) coded in the BfArM ATC "
                "system, heart rate in 1/min, BP components without a unit: critical", "female", "1966-01-22")
    b.stated({"coding": [atc("N05AH04", "Quetiapin", system=BFARM_ATC)], "text": "Quetiapin 100 mg"},
             status="active", start_days=-20)
    b.given({"coding": [atc("N05AX08", "Risperidon", system=BFARM_ATC)], "text": "Risperidon 2 mg"}, -50,
            dose=(2, "mg"), route_code=ORAL)
    b.stated({"coding": [atc("N04BA02", "Levodopa und Decarboxylasehemmer", system=BFARM_ATC)],
              "text": "Levodopa/Benserazid"}, status="entered-in-error", start_days=-30, end_days=-3)
    for hours, t, hr, bp in ((-120, 36.8, 78, (126, 80)), (-108, 36.8, 78, (126, 80)), (-28, 38.7, 84, (128, 80)),
                             (-8, 39.1, 86, (130, 82))):
        b.temp(at(hours), t)
        b.observation("hr", ["8867-4"], at(hours), category="vital-signs", value=hr, unit="/min")
        b.resources[-1]["valueQuantity"] = {"value": hr, "unit": "1/min", "system": UCUM, "code": "1/min"}
        b.observation("bp", ["85354-9"], at(hours), category="vital-signs",
                      components=[("8480-6", bp[0], "mm[Hg]"), ("8462-4", bp[1], "mm[Hg]")])
        for comp in b.resources[-1]["component"]:
            comp["valueQuantity"] = {"value": comp["valueQuantity"]["value"]}
    b.ck(-14, 1800, uln=190)
    b.resources[-1]["valueQuantity"]["unit"] = b.resources[-1]["valueQuantity"]["code"] = "U/l"
    d = b.draft(None, Dose(5, frequency=2), name="haloperidol",
                medication={"medicationCodeableConcept": {"coding": [atc("N05AD01", "Haloperidol", system=BFARM_ATC)],
                                                          "text": "Haloperidol 5 mg Tabletten"}})
    return Built(b, Expected(
        "critical", ["exposure", "hyperthermia", "ck"], ["quetiapine", "risperidone", "haloperidol"],
        "Quetiapine as an active MedicationStatement since -20 d (ATC N05AH04, system "
        "http://fhir.de/CodeSystem/bfarm/atc) and risperidone given at -50 h (MedicationAdministration, ATC "
        "N05AX08): exposure before onset (-28 h) -> 20; an entered-in-error levodopa statement is no withdrawal. "
        "38.7 and 39.1 -> 18. CK 1,800 'U/l' (a UCUM spelling of U/L) with ULN 190 = 9.5 x ULN -> 10. Heart rate "
        "in '1/min' and BP components without a unit (mm[Hg] implied by LOINC 8480-6/8462-4) are read. Total 48.",
        evidence={"tmax_cel": 39.1, "ck_peak_u_l": 1800, "ck_uln_u_l": 190}, suggest_delete_draft=delete(d)))


@scenario
def brand_name_free_text() -> Built:
    b = Builder("brand-name-free-text", "Free-text brand-name order 'Haldol 5 mg tablet'",
                "An uncoded order naming the brand only is recognised as haloperidol: critical", "male", "1988-04-04")
    b.add({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
           "medicationCodeableConcept": {"text": "Haldol 5 mg tablet"}, "subject": b.subject,
           "authoredOn": at(days=-3), "dosageInstruction": [Dose(5, frequency=2).fhir()]}, "mr")
    b.baseline(t=36.7, hr=80, rr=16, bp=(120, 76))
    b.vitals(-30, t=38.5, hr=86, rr=17, bp=(122, 78))
    b.vitals(-8, t=39.0, hr=88, rr=18, bp=(124, 78))
    b.ck(-12, 1500)
    d = b.draft(None, Dose(5, frequency=2), name="haldol", display="Haldol 5 mg tablet")
    return Built(b, Expected(
        "critical", ["exposure", "hyperthermia", "ck"], ["haloperidol"],
        "Active order with medicationCodeableConcept.text 'Haldol 5 mg tablet' only (no coding), authored -3 d: "
        "the brand Haldol (data/drug-names.tsv, from the RxNorm SBD names) is haloperidol -> exposure before onset "
        "20. 38.5 and 39.0 -> 18. CK 1,500 with ULN 200 = 7.5 x ULN -> 10. Total 48.",
        evidence={"tmax_cel": 39.0, "ck_peak_u_l": 1500, "ck_uln_u_l": 200}, suggest_delete_draft=delete(d)))


@scenario
def other_cause_infection() -> Built:
    b = Builder("other-cause-infection", "On haloperidol, febrile with low iron, pneumonia on antibiotics",
                "Exposure before onset, fever and iron in the NMS range but CK < 4 x ULN and pneumonia treated with "
                "ceftriaxone: warning, not critical, listing the infection", "female", "1971-09-09")
    b.med("5093", status="active", days_ago=6, dose=Dose(5, frequency=2))
    b.condition(SNOMED, "233604007", clinical_status="active", onset=at(-34))
    b.baseline(t=36.8, hr=80, rr=16, bp=(120, 76))
    b.vitals(-32, t=38.6, hr=92, rr=20, bp=(122, 78))
    b.vitals(-10, t=38.9, hr=94, rr=20, bp=(124, 78))
    b.iron(-20, 7.0)
    b.ck(-20, 300)
    b.given({"coding": [atc("J01DD04", "ceftriaxone")], "text": "ceftriaxone 2 g IV"}, -30, route_code="47625008")
    d = b.draft("5093", Dose(5, frequency=2), name="haloperidol")
    return Built(b, Expected(
        "warning", ["exposure", "hyperthermia"], ["haloperidol"],
        "Haloperidol active for 6 days -> exposure before onset (-32 h) 20. 38.6 and 38.9 -> 18. Iron 7.0 umol/L "
        "is in the NMS range, which with fever used to make the card critical; but CK 300 (1.5 x ULN) is below "
        "4 x ULN and the record shows another cause of fever: pneumonia (SNOMED 233604007, active) treated with "
        "ceftriaxone "
        "(ATC J01DD04, given -30 h). Other causes: warning, not critical, and the card lists the infection.",
        evidence={"tmax_cel": 38.9, "iron_min_umol_l": 7.0}, suggest_delete_draft=delete(d)))


# --- code systems real sites use: ICD-10-GM (BfArM) and WHO ICD-10 conditions --------------------------


@scenario
def icd10gm_pneumonia() -> Built:
    b = Builder("icd10gm-pneumonia", "German record: pneumonia coded in ICD-10-GM, fever and low iron on haloperidol",
                "An infection coded J18.9 in the BfArM ICD-10-GM system is weighed as infection (no antibiotic in "
                "the record): warning, not the iron-route critical card, and no 'not found: infection'", "female",
                "1968-06-12")
    b.stated({"coding": [atc("N05AD01", "Haloperidol", system=BFARM_ATC)], "text": "Haloperidol 5 mg Tabletten"},
             status="active", start_days=-6)
    b.condition(ICD10GM, "J18.9", clinical_status="active", onset=at(-34), display="Pneumonie, nicht näher bezeichnet")
    b.baseline(t=36.8, hr=80, rr=16, bp=(120, 76))
    b.vitals(-32, t=38.6, hr=92, rr=20, bp=(122, 78))
    b.vitals(-10, t=38.9, hr=94, rr=20, bp=(124, 78))
    b.iron(-20, 7.0)
    b.ck(-20, 300)
    d = b.draft(None, Dose(5, frequency=2), name="haloperidol",
                medication={"medicationCodeableConcept": {"coding": [atc("N05AD01", "Haloperidol", system=BFARM_ATC)],
                                                          "text": "Haloperidol 5 mg Tabletten"}})
    return Built(b, Expected(
        "warning", ["exposure", "hyperthermia"], ["haloperidol"],
        "Haloperidol as an active MedicationStatement since -6 d (ATC N05AD01, BfArM system) -> exposure before "
        "onset (-32 h) 20. 38.6 and 38.9 -> 18. Iron 7.0 umol/L is in the NMS range and CK 300 (1.5 x ULN) is "
        "below 4 x ULN. The record codes an active pneumonia as J18.9 in http://fhir.de/CodeSystem/bfarm/icd-10-gm "
        "(data/infection-conditions.tsv, ICD-10-GM prefix row J18): another cause of fever is found, so the iron "
        "route does not make the card critical -> warning, and the card lists the infection. No antimicrobial is in "
        "the record, so the verdict does not depend on how an empiric antibiotic is weighed. Before ICD-10-GM was "
        "read, the card was critical and said 'not found in the data seen: infection'.",
        evidence={"tmax_cel": 38.9, "iron_min_umol_l": 7.0}, suggest_delete_draft=delete(d)))


@scenario
def icd10gm_past_nms_rechallenge() -> Built:
    b = Builder("icd10gm-past-nms-rechallenge", "German record: previous NMS coded G21.0 in ICD-10-GM, haloperidol "
                "drafted", "A resolved Condition G21.0 (Malignes Neuroleptika-Syndrom) in the BfArM ICD-10-GM "
                "system and a new haloperidol draft: the re-challenge warning with normal vitals", "male", "1975-10-03")
    b.condition(ICD10GM, "G21.0", clinical_status="resolved", onset=at(days=-540), abatement=at(days=-526),
                display="Malignes Neuroleptika-Syndrom")
    b.baseline(t=36.7, hr=72, rr=14, bp=(122, 78))
    b.vitals(-20, t=36.8, hr=74, rr=15, bp=(124, 78))
    b.vitals(-4, t=36.9, hr=76, rr=15, bp=(122, 76))
    b.ck(-20, 130)
    d = b.draft(None, Dose(5, frequency=2), name="haloperidol",
                medication={"medicationCodeableConcept": {"coding": [atc("N05AD01", "Haloperidol", system=BFARM_ATC)],
                                                          "text": "Haloperidol 5 mg Tabletten"}})
    return Built(b, Expected(
        "warning", ["exposure"], ["haloperidol"],
        "The draft haloperidol (ATC N05AD01, BfArM system) is exposure (20); vitals and CK (130, ULN 200) are "
        "normal. The history rule reads the resolved Condition G21.0 in http://fhir.de/CodeSystem/bfarm/icd-10-gm "
        "(data/conditions.tsv, ICD-10-GM row verified in the BfArM ClaML) as a previous NMS: a dopamine antagonist "
        "drafted after a past NMS -> re-challenge warning, as for ICD-10-CM G21.0 (past-nms-rechallenge).",
        evidence={}, suggest_delete_draft=delete(d)))


@scenario
def who_icd10_pneumonia() -> Built:
    b = Builder("who-icd10-pneumonia", "WHO ICD-10 coded pneumonia, fever and low iron on haloperidol",
                "An infection coded J15.9 in WHO ICD-10 (http://hl7.org/fhir/sid/icd-10) is weighed as infection: "
                "warning, not critical", "male", "1959-02-17")
    b.med("5093", status="active", days_ago=6, dose=Dose(5, frequency=2))
    b.condition(ICD10, "J15.9", clinical_status="active", onset=at(-34), display="Bacterial pneumonia, unspecified")
    b.baseline(t=36.8, hr=80, rr=16, bp=(120, 76))
    b.vitals(-32, t=38.6, hr=92, rr=20, bp=(122, 78))
    b.vitals(-10, t=38.9, hr=94, rr=20, bp=(124, 78))
    b.iron(-20, 7.0)
    b.ck(-20, 300)
    d = b.draft("5093", Dose(5, frequency=2), name="haloperidol")
    return Built(b, Expected(
        "warning", ["exposure", "hyperthermia"], ["haloperidol"],
        "Haloperidol active for 6 days -> exposure before onset (-32 h) 20. 38.6 and 38.9 -> 18. Iron 7.0 umol/L "
        "(NMS range), CK 300 (1.5 x ULN). Active pneumonia coded J15.9 in WHO ICD-10 (data/infection-conditions.tsv, "
        "WHO prefix row J15, checked against the WHO 2019 tabular): another cause of fever is found -> warning, "
        "not the iron-route critical card. No antimicrobial in the record.",
        evidence={"tmax_cel": 38.9, "iron_min_umol_l": 7.0}, suggest_delete_draft=delete(d)))


# --- clinical policy: episodes, reconciliation, hyperthermia without a lab, other causes as evidence -----

IV = "47625008"
NO_GROWTH = coding(SNOMED, "264868006", "No growth (qualifier value)")


@scenario
def episode_post_surgery_metoclopramide() -> Built:
    b = Builder("episode-post-surgery-metoclopramide", "Redo cardiac surgery: post-operative CK, then IV "
                "metoclopramide, then fever and a new CK rise",
                "An afebrile CK rise before the first dose (post-operative, 4.9 x ULN) does not anchor the later "
                "febrile episode: critical", "male", "1957-04-12")
    b.baseline(t=36.8, hr=78, rr=16, bp=(124, 76))
    b.ck(-92, 700, uln=195)
    b.ck(-80, 955, uln=195)
    b.med("6915", status="active", days_ago=3, dose=Dose(10, frequency=3, route=IV, text="10 mg IV every 8 h"))
    for hours in (-71, -63, -55, -47):
        b.given({"coding": [rxnorm("6915")], "text": "metoclopramide 10 mg IV"}, hours, dose=(10, "mg"),
                route_code=IV)
    b.vitals(-40, t=38.3, hr=104, rr=20, bp=(132, 80))
    b.vitals(-30, t=38.7, hr=110, rr=22, bp=(150, 92))
    b.vitals(-20, t=39.0, hr=112, rr=22, bp=(128, 78))
    b.vitals(-7, t=39.4, hr=116, rr=24, bp=(146, 90))
    b.ck(-30, 2900, uln=195)
    b.ck(-8, 5100, uln=195)
    d = b.draft("6915", Dose(10, frequency=3, route=IV, text="10 mg IV every 8 h"), name="metoclopramide")
    return Built(b, Expected(
        "critical", ["exposure", "hyperthermia", "ck", "hypermetabolism"], ["metoclopramide"],
        "After redo cardiac surgery: CK 700 (-92 h, 3.6 x ULN 195) and 955 U/L (-80 h, 4.9 x ULN) without fever, "
        "then IV metoclopramide from -72 h (active order, doses given -71 to -47 h), then fever 38.3 (-40 h) -> "
        "39.4 degC (-7 h), 33 h, and CK 2,900 -> 5,100 U/L (26 x ULN). The post-operative CK rise precedes every "
        "exposure and has no fever: it is set aside and does not anchor the episode (it used to make the drug "
        "'come after onset': no card at any hook). The fever after the exposure opens the episode (onset -40 h, "
        "32 h after the first dose): exposure 20, 4 readings > 38.0 -> 18, CK from onset 5,100 / 195 = 26 x ULN "
        "-> 10. HR 116 vs 78 (+49 %) with RR 24 vs 16 (+50 %) at -7 h -> hypermetabolism 5. BP 150/92 = +21 % "
        "(no elevation) -> no autonomic item. Total 53.",
        evidence={"tmax_cel": 39.4, "ck_peak_u_l": 5100, "ck_uln_u_l": 195}, suggest_delete_draft=delete(d)))


@scenario
def episode_alcohol_withdrawal_haloperidol() -> Built:
    b = Builder("episode-alcohol-withdrawal-haloperidol", "Alcohol withdrawal: CK 4.5 x ULN, one dose of IV "
                "haloperidol, then a febrile NMS course",
                "A CK rise before the only dose (withdrawal, agitation) does not anchor the NMS course that follows "
                "the dose: critical", "male", "1970-10-03")
    b.baseline(t=37.2, hr=96, rr=18, bp=(138, 86))
    b.ck(-66, 900)
    b.given({"coding": [rxnorm("204416")], "text": "haloperidol 5 mg IV"}, -60, dose=(5, "mg"), route_code=IV)
    b.vitals(-40, t=38.5, hr=112, rr=22, bp=(150, 92))
    b.vitals(-28, t=39.3, hr=124, rr=26, bp=(176, 104))
    b.vitals(-14, t=40.0, hr=130, rr=28, bp=(132, 78))
    b.vitals(-4, t=39.8, hr=128, rr=28, bp=(168, 100))
    b.ck(-30, 3800)
    b.ck(-10, 8600)
    d = b.draft("204416", Dose(5, route=IV, text="5 mg IV once"), name="haloperidol")
    return Built(b, Expected(
        "critical", ["exposure", "hyperthermia", "ck", "autonomic", "hypermetabolism"], ["haloperidol"],
        "CK 900 U/L (4.5 x ULN 200) at -66 h without fever, before the one dose of haloperidol 5 mg IV (-60 h, "
        "MedicationAdministration). The pre-dose CK is set aside (it used to be the onset, so the dose 'came "
        "after onset': no card). Fever 38.5 (-40 h) to 40.0 opens the episode 20 h after the dose: exposure 20, "
        "4 readings > 38.0 -> 18, CK 8,600 = 43 x ULN -> 10, BP 176/104 = +28 %/+21 % and SBP 176 -> 132 within "
        "14 h -> 10, HR 130 vs 96 (+35 %) with RR 28 vs 18 (+56 %) -> 5. Total 63.",
        evidence={"tmax_cel": 40.0, "ck_peak_u_l": 8600, "ck_uln_u_l": 200}, suggest_delete_draft=delete(d)))


@scenario
def reconciliation_levodopa_stopped() -> Built:
    b = Builder("reconciliation-levodopa-stopped", "Parkinson's disease: levodopa order still active, a newer "
                "statement says stopped 3 days ago",
                "The newest record of what the patient takes wins: withdrawal from the stop, with the conflict on "
                "the card: critical", "male", "1948-02-21")
    b.condition(ICD10CM, "G20.A1", clinical_status="active", onset=at(days=-8 * 365))
    levodopa = rxnorm("197443")
    b.med("197443", status="active", days_ago=3 * 365, dose=Dose(1, unit="{tbl}", frequency=3,
                                                                 text="1 tablet three times daily"),
          extra={"category": [{"coding": [coding(
              "http://terminology.hl7.org/CodeSystem/medicationrequest-category", "outpatient", "Outpatient")]}]})
    stop = b.stated({"coding": [levodopa], "text": levodopa["display"]}, status="stopped", start_days=-3 * 365,
                    end_days=-3)
    stop["dateAsserted"] = at(days=-1)
    b.baseline(t=36.7, hr=76, rr=16, bp=(128, 78))
    b.vitals(-40, t=38.9, hr=124, rr=22, bp=(150, 90))
    b.vitals(-26, t=39.6, hr=150, rr=26, bp=(168, 100))
    b.vitals(-10, t=40.1, hr=166, rr=28, bp=(132, 80))
    b.ck(-16, 3400)
    b.draft(ACETAMINOPHEN_500[0], Dose(1000, frequency=4, as_needed=True), name="acetaminophen", listed=False,
            display=ACETAMINOPHEN_500[1])
    return Built(b, Expected(
        "critical", ["exposure", "hyperthermia", "ck", "autonomic", "hypermetabolism"], ["levodopa"],
        "Carbidopa/levodopa (RxNorm 197443): an outpatient MedicationRequest still 'active' (authored 3 years "
        "ago) and a newer MedicationStatement (reconciliation, asserted -1 d) 'stopped', effectivePeriod.end "
        "-3 d. The newest record of what the patient takes wins: the order is taken as stopped at -72 h, the "
        "card states the conflict, and the stop is a dopaminergic withdrawal counted from the stop (onset -40 h, "
        "32 h after it), not from the first levodopa years ago. Used to give no card (the active order cancelled "
        "the withdrawal). 38.9/39.6/40.1 -> 18; CK 3,400 = 17 x ULN -> 10; BP 168/100 = +31 % and SBP 168 -> 132 "
        "within 16 h -> 10; HR 166 vs 76 (+118 %), RR 28 vs 16 (+75 %) -> 5. Total 63. No delete suggestion "
        "(the draft, acetaminophen, is no dopamine antagonist).",
        evidence={"tmax_cel": 40.1, "ck_peak_u_l": 3400, "ck_uln_u_l": 200}))


@scenario
def hyperthermia_without_ck() -> Built:
    b = Builder("hyperthermia-without-ck", "IV haloperidol, 41.7 degC, labile BP, tachycardia, no CK yet",
                "Extreme hyperthermia with autonomic signs after the exposure is critical before any lab: the card "
                "asks for CK stat", "female", "1985-06-30")
    b.med("204416", status="active", days_ago=1.5, dose=Dose(5, frequency=4, route=IV, text="5 mg IV every 6 h"))
    b.given({"coding": [rxnorm("204416")], "text": "haloperidol 5 mg IV"}, -34, dose=(5, "mg"), route_code=IV)
    b.baseline(t=36.8, hr=84, rr=16, bp=(122, 76))
    b.vitals(-9, t=38.9, hr=118, rr=22, bp=(150, 90))
    b.vitals(-6, t=40.2, hr=130, rr=26, bp=(172, 104))
    b.vitals(-4, t=40.8, hr=138, rr=28, bp=(96, 58))
    b.vitals(-1, t=41.7, hr=142, rr=30, bp=(160, 96))
    d = b.draft("204416", Dose(5, route=IV, text="5 mg IV once"), name="haloperidol")
    return Built(b, Expected(
        "critical", ["exposure", "hyperthermia", "autonomic", "hypermetabolism"], ["haloperidol"],
        "Haloperidol IV, ordered -36 h (active) and given -34 h: exposure before onset (-9 h) 20. 38.9, 40.2, "
        "40.8, 41.7 degC, >= 40 degC for 5 h -> 18. SBP 172 = +41 % and 172 <-> 96 within 2 h -> 10; HR 142 vs "
        "84 (+69 %) with RR 30 vs 16 (+88 %) -> 5. No CK anywhere (cannot judge). Used to be a warning until a CK "
        "result arrived; now extreme hyperthermia (>= 40 degC twice, or one >= 41 degC) with autonomic lability or "
        "hypermetabolism gives a critical card that says no CK was measured and asks for it stat. Total 53.",
        evidence={"tmax_cel": 41.7}, suggest_delete_draft=delete(d)))


@scenario
def modest_ck_empiric_antibiotic() -> Built:
    b = Builder("modest-ck-empiric-antibiotic", "Three febrile days on haloperidol, CK 3.5 x ULN, iron 4.1, "
                "cultures negative, empiric ceftriaxone",
                "An empiric antimicrobial without a documented infection does not close the iron route: critical",
                "male", "1965-12-01")
    b.med("5093", status="active", days_ago=6, dose=Dose(5, frequency=2))
    b.baseline(t=36.8, hr=80, rr=16, bp=(120, 76))
    for hours, t, bp in ((-70, 38.8, (128, 80)), (-58, 39.1, (165, 100)), (-46, 39.6, (118, 72)),
                         (-34, 39.2, (170, 104)), (-22, 39.4, (124, 76)), (-10, 38.9, (158, 96))):
        b.vitals(hours, t=t, hr=94, rr=18, bp=bp)
    for hours in (-66, -42):
        b.add({"resourceType": "Observation", "status": "final",
               "category": [{"coding": [coding(OBS_CATEGORY, "laboratory", "Laboratory")]}],
               "code": {"coding": [coding(LOINC, "600-7", "Bacteria identified in Blood by Culture")]},
               "subject": b.subject, "effectiveDateTime": at(hours), "issued": at(hours + 48),
               "valueCodeableConcept": {"coding": [NO_GROWTH], "text": "No growth"}}, "culture")
    for hours in (-64, -40, -16):
        b.given({"coding": [atc("J01DD04", "ceftriaxone")], "text": "ceftriaxone 2 g IV"}, hours, route_code=IV)
    b.ck(-40, 700)
    b.iron(-40, 4.1)
    d = b.draft("5093", Dose(5, frequency=2), name="haloperidol")
    return Built(b, Expected(
        "critical", ["exposure", "hyperthermia", "autonomic"], ["haloperidol"],
        "Haloperidol active for 6 days -> exposure before onset (-70 h) 20. Six readings 38.8-39.6 degC over "
        "three days -> 18. CK 700 = 3.5 x ULN (not met). BP 170/104 = +42 % and 165 -> 118 within 12 h -> 10. "
        "Serum iron 4.1 umol/L is in the NMS range. Ceftriaxone given empirically, blood cultures (600-7) negative "
        "twice, no infection coded: 'possible infection: antimicrobial without a documented infection', which no "
        "longer counts as another cause, so the iron route gives critical (it used to stay a warning throughout). "
        "The card shows the negative cultures. Total 48.",
        evidence={"tmax_cel": 39.6, "iron_min_umol_l": 4.1}, suggest_delete_draft=delete(d)))


@scenario
def olanzapine_iron_pattern() -> Built:
    b = Builder("olanzapine-iron-pattern", "Olanzapine, fever and iron in the NMS range",
                "Olanzapine is judged like haloperidol: its anticholinergic action is not another cause of its "
                "own pattern: critical", "female", "1990-03-08")
    b.med("314154", status="active", days_ago=5, dose=Dose(10))
    b.baseline(t=36.8, hr=78, rr=16, bp=(118, 74))
    b.vitals(-30, t=38.7, hr=90, rr=18, bp=(122, 76))
    b.vitals(-12, t=39.0, hr=92, rr=18, bp=(124, 78))
    b.ck(-20, 500)
    b.iron(-20, 6.5)
    d = b.draft("312077", Dose(15), name="olanzapine")
    return Built(b, Expected(
        "critical", ["exposure", "hyperthermia"], ["olanzapine"],
        "Olanzapine active for 5 days (+ a draft 15 mg): exposure before onset 20. 38.7 and 39.0 -> 18. CK 500 = "
        "2.5 x ULN (not met); iron 6.5 umol/L in the NMS range and no other cause -> critical through the iron "
        "route. Olanzapine is an ACB-3 drug, and used to make 'anticholinergic toxicity: found', which blocked the "
        "iron route (warning): the drug under assessment never counts as its own other cause. Total 38.",
        evidence={"tmax_cel": 39.0, "iron_min_umol_l": 6.5}, suggest_delete_draft=delete(d)))


@scenario
def recurrence_after_coded_nms() -> Built:
    b = Builder("recurrence-after-coded-nms", "New febrile episode on haloperidol 3 weeks after a coded NMS",
                "A previous NMS with a new febrile episode on a dopamine antagonist escalates a partial pattern: "
                "critical", "male", "1975-05-17")
    b.condition(ICD10CM, "G21.0", clinical_status="resolved", onset=at(days=-35), abatement=at(days=-21))
    b.med("5093", status="active", days_ago=4, dose=Dose(2.5, frequency=2))
    b.baseline(t=36.7, hr=78, rr=16, bp=(122, 78))
    b.vitals(-30, t=38.5, hr=92, rr=18, bp=(126, 80))
    b.vitals(-10, t=39.0, hr=100, rr=20, bp=(128, 80))
    b.ck(-16, 600)
    b.wbc(-16, 12.5)
    d = b.draft("5093", Dose(5, frequency=2), name="haloperidol")
    return Built(b, Expected(
        "critical", ["exposure", "hyperthermia"], ["haloperidol"],
        "NMS coded (G21.0) 5 weeks ago, resolved 3 weeks ago; haloperidol restarted 4 days ago (active) and a dose "
        "increase drafted: exposure before onset 20. 38.5 and 39.0 -> 18. CK 600 = 3 x ULN (not met), WBC 12.5: "
        "laboratory changes; HR 100 vs 78 (+28 %), RR +25 % (no hypermetabolism), BP flat. Without the history "
        "this is a warning; a new febrile episode on a dopamine antagonist after a documented NMS (recurrence in "
        "15-20 %, re-challenge risk highest soon after the episode) with a further finding and no other cause "
        "escalates to critical. Total 38.",
        evidence={"tmax_cel": 39.0, "ck_peak_u_l": 600, "ck_uln_u_l": 200}, suggest_delete_draft=delete(d)))


# --- reading the record: harmless malformations read, prohibitions, duplicates, implausible values, drafts --


def _febrile_course(b: Builder, *, status: str = "final") -> list[JsonDict]:
    """Haloperidol for 3 days, a normal baseline, five temperatures from -40 h (38.3 -> 39.6 Cel) and CK
    4,000 U/L (20 x ULN): the critical picture the malformation scenarios below must keep."""
    b.med("5093", status="active", days_ago=3, dose=Dose(5, frequency=2))
    b.baseline(t=36.8, hr=78, rr=15, bp=(122, 76))
    temps = [b.temp(at(hours), t, status=status)
             for hours, t in ((-40, 38.3), (-30, 38.7), (-20, 39.1), (-10, 39.4), (-4, 39.6))]
    b.ck(-12, 4000)
    return temps


@scenario
def status_final_with_space() -> Built:
    b = Builder("status-final-with-space", "Five temperatures with status 'Final ' (trailing space)",
                "A status with stray whitespace changes no meaning: the five temperatures are read and the card "
                "stays critical", "female", "1977-05-12")
    _febrile_course(b, status="Final ")
    d = b.draft("5093", Dose(5, frequency=2), name="haloperidol")
    return Built(b, Expected(
        "critical", ["exposure", "hyperthermia", "ck"], ["haloperidol"],
        "Haloperidol active since -3 d -> exposure before onset (-40 h) 20. The five temperatures 38.3, 38.7, "
        "39.1, 39.4, 39.6 carry status 'Final ' (trailing space), which is not a valid FHIR code: they used to "
        "be dropped without a word (warning: 'no temperature recorded'). The whitespace is trimmed on both "
        "reading paths -> 5 readings > 38.0 -> 18. CK 4,000 with ULN 200 = 20 x ULN -> 10. Total 48. Through "
        "the local FHIR server: the server stores the status as sent and returns it, so the verdict is the same.",
        evidence={"tmax_cel": 39.6, "ck_peak_u_l": 4000, "ck_uln_u_l": 200}, suggest_delete_draft=delete(d)))


@scenario
def extension_without_url() -> Built:
    b = Builder("extension-without-url", "Five temperatures with an extension that lacks its url",
                "An extension without url changes no meaning: it is dropped, the readings are used and the card "
                "stays critical", "male", "1983-10-02")
    for temp in _febrile_course(b):
        temp["extension"] = [{"valueString": "tympanic"}]
        temp["valueQuantity"]["extension"] = [{"valueString": "device 7"}]
    d = b.draft("5093", Dose(5, frequency=2), name="haloperidol")
    return Built(b, Expected(
        "critical", ["exposure", "hyperthermia", "ck"], ["haloperidol"],
        "As status-final-with-space, but every temperature carries an extension without 'url' (on the "
        "Observation and on its valueQuantity). Extension.url is required, so the R4B model rejected the whole "
        "Observation; an extension never changes the meaning of the rest (a modifierExtension would, and stays "
        "unreadable), so the url-less extensions are dropped and the readings used: 5 readings > 38.0 -> 18, "
        "CK 20 x ULN -> 10, exposure 20: total 48, critical. The local FHIR server stores and returns the "
        "url-less extensions as sent, so both modes read the same data.",
        evidence={"tmax_cel": 39.6, "ck_peak_u_l": 4000, "ck_uln_u_l": 200}, suggest_delete_draft=delete(d)))


@scenario
def do_not_perform_haloperidol() -> Built:
    b = Builder("do-not-perform-haloperidol", "An order NOT to give haloperidol (doNotPerform)",
                "A prohibition is never exposure: fever and CK rise with a doNotPerform haloperidol order (record "
                "and draft) as the only antagonist: no card", "female", "1962-12-01")
    b.add(b.med_request("5093", status="active", authored=at(days=-3), dose=None,
                        extra={"doNotPerform": True}), "mr")
    b.baseline(t=36.8, hr=78, rr=15, bp=(122, 76))
    b.vitals(-30, t=38.6, hr=84, rr=16, bp=(124, 78))
    b.vitals(-8, t=39.1, hr=86, rr=17, bp=(124, 78))
    b.ck(-12, 3000)
    draft = b.draft("5093", None, name="haloperidol-not")
    draft["doNotPerform"] = True
    return Built(b, Expected(
        None, ["hyperthermia", "ck"], [],
        "The record's only haloperidol order has doNotPerform true (an order NOT to give it, e.g. after a "
        "previous reaction), and so has the draft: neither is exposure, in any hook or mode. 38.6 and 39.1 -> "
        "hyperthermia 18, CK 3,000 = 15 x ULN -> 10, but no dopamine antagonist -> no card (it used to be "
        "critical).", evidence={}))


@scenario
def duplicate_observation_id() -> Built:
    b = Builder("duplicate-observation-id", "One temperature listed twice under one id (two versions)",
                "One resource per type and id, the newest version wins: a corrected temperature does not count "
                "as a second febrile reading", "male", "1990-02-14")
    b.med("5093", status="active", days_ago=3, dose=Dose(5, frequency=2))
    b.baseline(t=36.8, hr=78, rr=15, bp=(122, 76))
    first = b.temp(at(-20), 38.7)
    tag = first["meta"]["tag"]
    first["meta"] = {"versionId": "1", "lastUpdated": at(-19.5), "tag": tag}
    corrected = copy.deepcopy(first)
    corrected["meta"] = {"versionId": "2", "lastUpdated": at(-15), "tag": tag}
    corrected["valueQuantity"]["value"] = 37.9
    b.resources.append(corrected)
    b.temp(at(-8), 38.9)
    b.ck(-12, 1800)
    d = b.draft("5093", Dose(5, frequency=2), name="haloperidol")
    return Built(b, Expected(
        "warning", ["exposure", "ck"], ["haloperidol"],
        "Observation duplicate-observation-id-temp-1 is listed twice: version 1 (38.7 at -20 h, lastUpdated "
        "-19.5 h) and version 2 (corrected to 37.9, lastUpdated -15 h). Only the newest version is used, so the "
        "only febrile reading is 38.9 at -8 h -> hyperthermia not met (used to count 38.7 too: 2 readings, "
        "critical). Exposure 20, CK 1,800 = 9 x ULN -> 10 -> warning. Through the local FHIR server the second "
        "PUT replaces the first, so the server returns version 2 only: the same verdict.",
        evidence={"tmax_cel": 38.9, "ck_peak_u_l": 1800, "ck_uln_u_l": 200}, suggest_delete_draft=delete(d)))


@scenario
def implausible_temperatures() -> Built:
    b = Builder("implausible-temperatures", "Temperatures of 102.9 and 4.1 labelled Cel",
                "Values outside the plausible range (13-47 Cel, data/thresholds.toml [plausible]) are not used "
                "and are listed on the card as implausible", "female", "1986-06-30")
    b.med("5093", status="active", days_ago=3, dose=Dose(5, frequency=2))
    b.baseline(t=36.8, hr=78, rr=15, bp=(122, 76))
    b.temp(at(-30), 38.6)
    b.temp(at(-20), 102.9)
    b.temp(at(-10), 4.1)
    b.ck(-12, 1800)
    d = b.draft("5093", Dose(5, frequency=2), name="haloperidol")
    return Built(b, Expected(
        "warning", ["exposure", "ck"], ["haloperidol"],
        "102.9 labelled Cel (a Fahrenheit value with the wrong unit) and 4.1 Cel are outside the plausible "
        "13-47 Cel range: not used, listed as implausible. The only febrile reading left is 38.6 -> "
        "hyperthermia not met (102.9 used to count as a second one: critical, 'T 102.9 °C'). Exposure 20, CK "
        "1,800 = 9 x ULN -> 10 -> warning.",
        evidence={"tmax_cel": 38.6, "ck_peak_u_l": 1800, "ck_uln_u_l": 200}, suggest_delete_draft=delete(d)))


@scenario
def future_authored_draft() -> Built:
    b = Builder("future-authored-draft", "Draft haloperidol with authoredOn tomorrow after a past NMS",
                "A draft is exposure about to start whatever its authoredOn: the re-challenge warning stays",
                "male", "1972-08-19")
    b.condition(ICD10CM, "G21.0", clinical_status="resolved", onset=at(days=-400), abatement=at(days=-386))
    b.baseline(t=36.7, hr=72, rr=14, bp=(122, 78))
    b.vitals(-6, t=36.9, hr=74, rr=15, bp=(124, 78))
    b.ck(-20, 120)
    d = b.draft("310672", Dose(5, frequency=2), name="haloperidol")
    d["authoredOn"] = at(hours=20)
    return Built(b, Expected(
        "warning", ["exposure"], ["haloperidol"],
        "The draft haloperidol (authoredOn 20 h in the future, as some order forms stamp the planned start) "
        "is exposure about to start -> 20; with the resolved NMS episode on record (G21.0) the re-challenge "
        "warning applies. Vitals and CK 120 are normal. Patient-view has no draft: no card.",
        evidence={}, suggest_delete_draft=delete(d)))


@scenario
def iv_draft_without_route() -> Built:
    b = Builder("iv-draft-without-route", "Haloperidol injection orders without a route element",
                "The route comes from the order or stays unknown: an injection order without a route is not "
                "called IM (it may be IV), so an afebrile CK rise is not explained as an IM artefact",
                "female", "1980-03-03")
    b.med("204416", status="active", days_ago=2, dose=Dose(5, frequency=2, route=None, text="5 mg"))
    b.baseline(t=36.8, hr=78, rr=15, bp=(122, 76))
    b.vitals(-6, t=37.2, hr=80, rr=15, bp=(122, 78))
    b.ck(-12, 2000)
    d = b.draft("204416", Dose(5, frequency=2, route=None, text="5 mg slow IV push"), name="haloperidol")
    return Built(b, Expected(
        "warning", ["exposure", "ck"], ["haloperidol"],
        "Haloperidol 5 mg/mL injectable solution (RxNorm 204416) ordered -2 d and drafted again, neither with a "
        "route element (the draft's text says IV). The product can be given IM or IV, so the route stays "
        "unknown: the card names no IM route, no 'intramuscular' risk factor and no IM-injection CK artefact "
        "(it used to call both IM). Afebrile CK 2,000 = 10 x ULN with exposure -> warning.",
        evidence={"ck_peak_u_l": 2000, "ck_uln_u_l": 200}, suggest_delete_draft=delete(d)))


# --- FHIR access: prefetch completeness (included Medications), identity by literal reference -------------

HALOPERIDOL_INJ = "Haloperidol 5 mg/ml Injektionslösung"


def _german_course(b: Builder) -> None:
    """The textbook NMS course of the German (MII-core-data-set-shaped) records: baseline, then three febrile
    rounds with labile blood pressure and tachycardia, CK rising to 27 x ULN (ULN 190, unit 'U/l')."""
    b.baseline(t=36.7, hr=76, rr=15, bp=(122, 78))
    b.vitals(-30, t=38.6, hr=104, rr=18, bp=(124, 80))
    b.vitals(-18, t=39.2, hr=122, rr=24, bp=(168, 102))
    b.vitals(-6, t=39.8, hr=126, rr=26, bp=(118, 74))
    for hours, value in ((-20, 2400), (-8, 5200)):
        b.ck(hours, value, uln=190)
        b.resources[-1]["valueQuantity"]["unit"] = b.resources[-1]["valueQuantity"]["code"] = "U/l"


def _by_reference(b: Builder, medication: str) -> JsonDict:
    """An order, two administrations and a statement of one drug, each naming it only by ``medicationReference``."""
    ref = {"reference": medication}
    b.add({"resourceType": "MedicationRequest", "status": "active", "intent": "order", "medicationReference": ref,
           "subject": b.subject, "authoredOn": at(days=-3),
           "dosageInstruction": [Dose(5, frequency=2, route=IM, text="5 mg i.m. 2x täglich").fhir()]}, "mr")
    for hours in (-60, -48):
        b.add({"resourceType": "MedicationAdministration", "status": "completed", "medicationReference": ref,
               "subject": b.subject, "effectiveDateTime": at(hours),
               "dosage": {"route": route(IM), "dose": quantity(5, "mg")}}, "ma")
    return b.add({"resourceType": "MedicationStatement", "status": "active", "medicationReference": ref,
                  "subject": b.subject, "effectivePeriod": {"start": at(days=-3)}, "dateAsserted": at(days=-3)}, "ms")


@scenario
def german_medication_reference() -> Built:
    b = Builder("german-medication-reference", "German record: every drug named through a Medication reference",
                "MII-core-data-set shape: orders, administrations and statements name haloperidol only through "
                "medicationReference to a Medication coded in BfArM ATC with German text; the prefetch carries it "
                "through _include: critical, prefetch-only too", "female", "1958-05-17")
    halo = b.add({"resourceType": "Medication", "status": "active",
                  "code": {"coding": [atc("N05AD01", "Haloperidol", system=BFARM_ATC)], "text": HALOPERIDOL_INJ},
                  "form": {"text": "Injektionslösung"}}, "medication")
    # pantoprazole, WHO ATC A02BC02 (https://atcddd.fhi.no/atc_ddd_index/?code=A02BC02): no rule reads it, so
    # it is in none of the data tables (marked here as the generator's rule asks)
    ppi = b.add({"resourceType": "Medication", "status": "active",
                 "code": {"coding": [coding(BFARM_ATC, "A02BC02", "Pantoprazol")],
                          "text": "Pantoprazol 40 mg magensaftresistente Tabletten"}}, "medication")
    _by_reference(b, f"Medication/{halo['id']}")
    b.add({"resourceType": "MedicationStatement", "status": "active",
           "medicationReference": {"reference": f"Medication/{ppi['id']}"}, "subject": b.subject,
           "effectivePeriod": {"start": at(days=-30)}, "dateAsserted": at(days=-30)}, "ms")
    _german_course(b)
    d = b.draft(None, Dose(5, frequency=2, route=IM), name="haloperidol",
                medication={"medicationReference": {"reference": f"Medication/{halo['id']}"}})
    return Built(b, Expected(
        "critical", ["exposure", "hyperthermia", "ck", "autonomic", "hypermetabolism"], ["haloperidol"],
        f"Every medication record names its drug only by medicationReference (no display): Medication/{halo['id']} "
        "is coded ATC N05AD01 'Haloperidol' in http://fhir.de/CodeSystem/bfarm/atc with the German text "
        f"'{HALOPERIDOL_INJ}'. The prefetch templates ask for _include=<record type>:medication, so the "
        "Medication arrives with the records (search mode include) and prefetch alone identifies haloperidol "
        "(ordered -3 d, given IM at -60 h and -48 h, statement since -3 d); the draft references the same "
        "Medication. Exposure before onset (-30 h) -> 20. 38.6, 39.2, 39.8 -> 18. CK 5,200 'U/l' with ULN 190 "
        "= 27 x ULN -> 10 (febrile: no IM artefact). Baseline HR 76, BP 122/78: BP 168/102 at -18 h (+38 %/+31 "
        "%) and SBP 168 -> 118 within 12 h -> 10; HR 122 (+61 %) with RR 24 (+60 %) -> 5. Total 63. Pantoprazole "
        "(ATC A02BC02, by reference too) is identified and plays no part.",
        evidence={"tmax_cel": 39.8, "ck_peak_u_l": 5200, "ck_uln_u_l": 190}, suggest_delete_draft=delete(d)))


@scenario
def german_medication_unresolved() -> Built:
    b = Builder("german-medication-unresolved", "German record: the referenced Medication cannot be found",
                "Haloperidol records reference a Medication that is neither in prefetch nor on the FHIR server: the "
                "card is built from the risperidone statement and says that 4 medication records could not be "
                "identified", "male", "1962-10-03")
    b.stated({"coding": [atc("N05AX08", "Risperidon", system=BFARM_ATC)], "text": "Risperidon 2 mg Tabletten"},
             status="active", start_days=-20)
    _by_reference(b, f"Medication/{b.sid}-medication-missing")
    _german_course(b)
    d = b.draft(None, Dose(2, frequency=1), name="risperidone",
                medication={"medicationCodeableConcept": {"coding": [atc("N05AX08", "Risperidon", system=BFARM_ATC)],
                                                          "text": "Risperidon 2 mg Tabletten"}})
    return Built(b, Expected(
        "critical", ["exposure", "hyperthermia", "ck", "autonomic", "hypermetabolism"], ["risperidone"],
        f"The order, two administrations and the statement reference Medication/{b.sid}-medication-missing, "
        "which no prefetch _include, contained resource or FHIR server read can supply: the 4 records are "
        "counted and the card's data line says '4 medication records could not be identified' with why "
        "(prefetch-only: 'Medication not in prefetch, no FHIR server'). The risperidone statement (ATC N05AX08, "
        "active since -20 d) is exposure before onset (-30 h) -> 20. 38.6, 39.2, 39.8 -> 18. CK 5,200 'U/l' "
        "with ULN 190 = 27 x ULN -> 10. BP 168/102 then 118/74 -> 10; HR 122 with RR 24 -> 5. Total 63.",
        evidence={"tmax_cel": 39.8, "ck_peak_u_l": 5200, "ck_uln_u_l": 190}, suggest_delete_draft=delete(d)))


@scenario
def identity_by_shape() -> Built:
    b = Builder("identity-by-shape", "Another patient's fever and CK under look-alike subjects",
                "A patient with no data of their own; another patient's haloperidol, fever and CK name the subject "
                "by identifier only, by display only, or by an absolute reference on another server ending in "
                "this patient's id: none is evidence, no card", "female", "1979-02-14")
    other_server = {"reference": f"https://other.example/fhir/Patient/{b.pid}"}
    by_identifier = {"identifier": {"system": "urn:oid:1.2.276.0.76.4.8", "value": "X110173919"}}
    by_display = {"display": "SYNTHETIC Fixture, Other"}
    shapes = (other_server, by_identifier, by_display)
    foreign: dict[str, list[JsonDict]] = {"medications": [], "temperature": [], "vitals": [], "labs": []}
    for i, subject in enumerate(shapes):
        foreign["medications"].append(b.add({
            "resourceType": "MedicationRequest", "status": "active", "intent": "order",
            "medicationCodeableConcept": {"coding": [atc("N05AD01", "Haloperidol", system=BFARM_ATC)],
                                          "text": "Haloperidol 5 mg Tabletten"},
            "subject": subject, "authoredOn": at(days=-3 - i)}, "mr"))
        for hours, t in ((-120, 36.8), (-108, 36.8), (-26, 38.7), (-8, 39.4)):
            foreign["temperature"].append(b.temp(at(hours - i), t))
            b.resources[-1]["subject"] = subject
        foreign["labs"].append(b.ck(-12 - i, 4100))
        b.resources[-1]["subject"] = subject
    b.unsolicited = {key: [r for r in found if "reference" not in r["subject"]] for key, found in foreign.items()}
    b.unsolicited = {key: found for key, found in b.unsolicited.items() if found}
    b.draft("5093", Dose(5, frequency=2), name="haloperidol")
    return Built(b, Expected(
        None, ["exposure"], [],
        "The patient has no record of their own. Another patient's haloperidol orders, temperatures (38.7, 39.4) "
        "and CK 4,100 name their subject as https://other.example/fhir/Patient/<this id> (another server), by "
        "identifier only, or by display only; the prefetch carries all of them (a client that filters by its "
        "own idea of the patient). Only a literal reference to Patient/<this id> on the FHIR server in use proves "
        "the patient, so every one is excluded, counted by type and why, and logged; the draft haloperidol is "
        "exposure (20) with nothing else to assess -> no card.",
        evidence={}))


# --- site knowledge: a German hospital's local CK code (NMS_CDS_SITE_FILE; docs/site-file.md) ------------

CK_MB_LOINC = "32673-6"  # LOINC defines it as CK-MB; the site below reports total CK under it


@scenario
def site_local_ck_code() -> Built:
    b = Builder("site-local-ck-code", "German record: total CK under LOINC 32673-6 'Kreatinkinase'",
                "A German university hospital reports total CK under LOINC 32673-6 (CK-MB in LOINC) with the text "
                "'Kreatinkinase': by default the code is not read as CK, so the card is a warning that asks for "
                "CK while 24,000 U/L is on file; with a site file mapping the code to total CK "
                "(tests/knowledge/test_site_file.py) the same record gives the critical card with CK read",
                "female", "1968-04-22")
    haloperidol = {"coding": [atc("N05AD01", "Haloperidol", system=BFARM_ATC)], "text": "Haloperidol 5 mg Tabletten"}
    b.stated(haloperidol, status="active", start_days=-4)
    b.baseline(t=36.6, hr=74, rr=15, bp=(124, 78))
    b.vitals(-30, t=38.5, hr=102, rr=18, bp=(126, 80))
    b.vitals(-18, t=39.1, hr=120, rr=24, bp=(166, 100))
    b.vitals(-6, t=39.5, hr=124, rr=25, bp=(120, 76))
    b.add({"resourceType": "Observation", "status": "final",
           "category": [{"coding": [coding(OBS_CATEGORY, "laboratory", "Laboratory")]}],
           "code": {"coding": [{"system": LOINC, "code": CK_MB_LOINC, "display": "Kreatinkinase"}],
                    "text": "Kreatinkinase"},
           "subject": b.subject, "effectiveDateTime": at(-10), "issued": at(-9),
           "valueQuantity": quantity(24000, "U/L"),
           "referenceRange": [{"low": quantity(30, "U/L"), "high": quantity(170, "U/L")}]}, "ck")
    d = b.draft(None, Dose(5, frequency=2), name="haloperidol", medication={"medicationCodeableConcept": haloperidol})
    return Built(b, Expected(
        "warning", ["exposure", "hyperthermia", "autonomic", "hypermetabolism"], ["haloperidol"],
        "Haloperidol (BfArM ATC N05AD01, stated since -4 d) is exposure before onset (-30 h) -> 20. 38.5, 39.1, "
        "39.5 -> 18 (below the 40 degC extreme-hyperthermia line). BP 166/100 then 120/76 -> 10; HR 120 with RR "
        "24 -> 5. The CK of 24,000 U/L (ULN 170) is coded LOINC 32673-6, which LOINC defines as CK-MB: by "
        "default it is not read, so CK is missing and the card suggests ordering it -> warning. With the site "
        "file mapping 32673-6 'Kreatinkinase' to total CK it is 141 x ULN -> critical "
        "(tests/knowledge/test_site_file.py).",
        evidence={"tmax_cel": 39.5}, suggest_delete_draft=delete(d)))


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


README_HEAD = """\
# nms-cds FHIR fixtures

> **All data here are SYNTHETIC.** No real patient. Every resource in the bundles carries the meta tag
> `http://terminology.hl7.org/CodeSystem/v3-ActReason|HTEST` ("test health data") and every Patient is named
> `SYNTHETIC <scenario title>`. The shapes follow the published patterns in `docs/clinical-reference.md`
> (section 7.2 and its negative/confounder fixtures); they are not case data.

Each folder `scenarios/<id>/` holds:

- `bundle.json`: a FHIR R4 `transaction` Bundle (one patient, `PUT <Type>/<id>` per entry, ids prefixed by
  the scenario id so that all scenarios can be loaded into one server). Patient id `nms-<id>`.
- `request.json`: a CDS Hooks 2.0 `order-sign` request with `draftOrders` and a `prefetch` computed from the
  bundle with the service's own templates (`cds_service.services.templates.prefetch_templates()`) by
  `cds_service.devtools.fixtures.fill_prefetch`. No `fhirServer` (prefetch-only); `hookInstance` is a fixed uuid5.
- `expected.json`: the specification the rules are tested against: `indicator` (`critical`, `warning` or
  `null` = no card), `iec_points` (structured IEC points from data: exposure 20, hyperthermia 18,
  CK >= 4 x ULN 10, autonomic lability 10, hypermetabolism 5), `criteria`, `drugs` the card must name,
  `evidence` (canonical values the card must show), `suggest_delete_draft`, `hooks` (the expected indicator
  of each hook for the same moment: `patient-view` with no draft, with `patient-view-why`; `order-select`
  with the drafts that have an id selected; `order-sign`) and `notes` (the hand calculation against
  `cds_service/clinical/data/thresholds.toml`). `cds_service.devtools.fixtures.request_for_hook` derives
  the patient-view and order-select requests from `request.json`.

## Time

Every time is written relative to the anchor instant **{anchor}** (`cds_service.devtools.fixtures.ANCHOR`), which the
scenarios treat as "now". For a live demo, move a scenario to the present with

```python
from datetime import UTC, datetime
from cds_service.devtools.fixtures import delta_to, load_scenario, rebase

s = load_scenario("classic-nms")
bundle = rebase(s.bundle, delta_to(datetime.now(UTC)))
```

`rebase` shifts every `dateTime`/`instant` by the delta (time zone and precision kept) and every plain date
by whole days, except `birthDate` and `deceasedDateTime`.

## Regenerate

```
.venv/bin/python fhir_fixtures/build_fixtures.py
```

`build_fixtures.py` is the source of truth; the JSON files and this README are its output (byte-for-byte
deterministic; `tests/devtools/test_fixtures_library.py` checks that the committed files match). Codes come from
`cds_service/clinical/data/*.tsv`; the generator raises on a code that is not there (except the
acetaminophen code and the text-only antibiotic, marked in the generator).

Conventions shared by the scenarios: baseline vital signs 5 and 4.5 days before the anchor (inside the
24-168 h baseline window before any first febrile reading in the last 72 h); acute vitals within the last
72 h; labs within the last 5 days; CK `referenceRange.high` 200 U/L unless a scenario says otherwise.
A card that is shown suggests deleting the draft order when the draft is a dopamine antagonist with an id.

## Scenarios

| scenario | what it shows | expected indicator (order-sign) | patient-view | order-select | IEC points from data |
|---|---|---|---|---|---|
"""


def readme(built: list[Built]) -> str:
    rows = []
    for item in built:
        exp = item.expected_json()
        indicator = exp["indicator"] or "none (no card)"
        view = exp["hooks"]["patient-view"] or "none"
        select = exp["hooks"]["order-select"] or "none"
        rows.append(f"| `{item.sid}` | {exp['shows']} | {indicator} | {view} | {select} | {exp['iec_points']} |")
    head = README_HEAD.replace("{anchor}", ANCHOR.strftime("%Y-%m-%dT%H:%M:%SZ"))
    return head + "\n".join(rows) + "\n"


def build_all() -> list[Built]:
    built = [fn() for fn in SCENARIOS]
    ids = [b.sid for b in built]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate scenario ids")
    return sorted(built, key=lambda b: b.sid)


def build(out_dir: Path) -> list[Path]:
    """Write every scenario and the README under ``out_dir``; returns the files written."""
    built = build_all()
    scen_dir = out_dir / "scenarios"
    scen_dir.mkdir(parents=True, exist_ok=True)
    keep = {b.sid for b in built}
    for stale in sorted(scen_dir.iterdir()):
        if stale.is_dir() and stale.name not in keep:
            shutil.rmtree(stale)
    written: list[Path] = []
    for item in built:
        target = scen_dir / item.sid
        target.mkdir(exist_ok=True)
        files = {
            "bundle.json": item.builder.bundle(),
            "request.json": item.builder.request(item.draft_bundle),
            "expected.json": item.expected_json(),
        }
        for name, content in files.items():
            path = target / name
            path.write_text(dumps(content), encoding="utf-8", newline="\n")
            written.append(path)
    readme_path = out_dir / "README.md"
    readme_path.write_text(readme(built), encoding="utf-8", newline="\n")
    written.append(readme_path)
    return written


def main(argv: list[str]) -> int:
    out_dir = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent
    files = build(out_dir)
    print(f"wrote {len(files)} files under {out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
