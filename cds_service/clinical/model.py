"""Plain data in and out of the clinical core: no FHIR models, no Flask, no clock.

The data-access layer flattens FHIR resources into these records; :func:`cds_service.clinical.assess`
turns a :class:`ClinicalInput` into an :class:`Assessment`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

Indicator = Literal["critical", "warning", "info"]


@dataclass(frozen=True, slots=True)
class Coding:
    system: str | None
    code: str | None
    display: str | None = None


@dataclass(frozen=True, slots=True)
class MedicationInput:
    """One MedicationRequest, from the draft orders (``is_draft``) or from the patient's record."""

    ref: str | None  # "MedicationRequest/<id>" when it has an id
    is_draft: bool
    status: str | None
    codings: tuple[Coding, ...] = ()
    names: tuple[str, ...] = ()  # CodeableConcept.text, coding displays, Medication names, reference display
    route: tuple[Coding, ...] = ()
    route_text: str | None = None
    authored: datetime | None = None
    ended: datetime | None = None  # validityPeriod.end, dosage bounds end
    dose_value: float | None = None
    dose_unit: str | None = None


@dataclass(frozen=True, slots=True)
class ObservationInput:
    """One measured value: an Observation, or one component of a panel (blood pressure)."""

    ref: str | None
    status: str | None
    codes: tuple[str, ...]  # LOINC codes
    value: float | None
    unit: str | None  # UCUM code, else the unit text
    time: datetime | None
    ref_low: float | None = None
    ref_high: float | None = None
    ref_unit: str | None = None


@dataclass(frozen=True, slots=True)
class HistoryInput:
    kind: Literal["condition", "allergy"]
    codings: tuple[Coding, ...]
    text: str | None
    recorded: datetime | None
    verification: str | None = None
    ref: str | None = None


@dataclass(frozen=True)
class ClinicalInput:
    now: datetime
    sex: str | None = None
    medications: tuple[MedicationInput, ...] = ()
    observations: tuple[ObservationInput, ...] = ()
    history: tuple[HistoryInput, ...] = ()
    missing: tuple[str, ...] = ()  # what could not be retrieved, in words ("laboratory results")
    ignored_orders: int = 0  # draft orders that could not be read (no medication, unparseable)


# --- output ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reading:
    concept: str
    value: float
    unit: str
    time: datetime
    code: str
    ref: str | None = None
    uln: float | None = None  # upper reference limit in canonical units, when the lab gave one


@dataclass(frozen=True, slots=True)
class Exposure:
    ingredient: str
    drug_class: str
    role: Literal["antagonist", "withdrawal", "lithium"]
    label: str  # what the order said (display/text), for the card
    ref: str | None
    is_draft: bool
    status: str | None
    authored: datetime | None
    ended: datetime | None
    route: str | None  # "im", "iv", "oral", "sc" or None
    long_acting: bool
    matched_by: Literal["rxnorm", "name"]
    dose_value: float | None = None
    dose_unit: str | None = None


@dataclass
class Criterion:
    name: str  # exposure, hyperthermia, ck, autonomic, hypermetabolism
    label: str
    points_possible: int
    met: bool | None  # None: cannot be judged from the data that were seen
    points: int
    summary: str  # one line with the decisive values
    evidence: list[Reading] = field(default_factory=list)


@dataclass
class Finding:
    """Supporting acute-phase evidence (serum iron, WBC, CRP, albumin) - never a trigger on its own."""

    name: str
    present: bool
    summary: str
    evidence: list[Reading] = field(default_factory=list)


@dataclass
class HistoryItem:
    kind: str
    description: str
    recorded: datetime | None
    ref: str | None


@dataclass
class DataQuality:
    used: int = 0
    entered_in_error: int = 0
    not_final: int = 0
    unusable: int = 0  # no value, unknown unit, no time, in the future


@dataclass
class Assessment:
    now: datetime
    indicator: Indicator | None
    reasons: list[str]
    exposures: list[Exposure]
    criteria: list[Criterion]
    findings: list[Finding]
    history: list[HistoryItem]
    risk_factors: list[str]
    readings: dict[str, list[Reading]]  # concept -> time-ordered readings used
    quality: DataQuality
    missing: list[str]
    missing_labs: list[str]  # LOINC codes worth ordering (not resulted in the lab window)
    ignored_orders: int = 0
    hours_exposure_to_fever: float | None = None
    im_ck_artefact: bool = False
    ck_peak: Reading | None = None
    ck_uln: float | None = None  # the ULN the CK criterion used (lab range or documented fallback)

    @property
    def score(self) -> int:
        return sum(c.points for c in self.criteria)

    def criterion(self, name: str) -> Criterion:
        return next(c for c in self.criteria if c.name == name)

    @property
    def draft_exposures(self) -> list[Exposure]:
        return [e for e in self.exposures if e.is_draft and e.role == "antagonist"]
