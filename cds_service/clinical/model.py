"""Plain data in and out of the clinical core: no FHIR models, no Flask, no clock.

The data-access layer flattens FHIR resources into these records; :func:`cds_service.clinical.assess`
turns a :class:`ClinicalInput` into an :class:`Assessment`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, NamedTuple

Indicator = Literal["critical", "warning", "info"]
MedicationKind = Literal["request", "administration", "statement"]


@dataclass(frozen=True, slots=True)
class Coding:
    system: str | None
    code: str | None
    display: str | None = None


@dataclass(frozen=True, slots=True)
class MedicationInput:
    """One record of drug exposure: a MedicationRequest (from the draft orders, ``is_draft``, or the record),
    a MedicationAdministration (a dose given) or a MedicationStatement (home or reported medication)."""

    ref: str | None  # "MedicationRequest/<id>" (or the administration's / statement's) when it has an id
    is_draft: bool
    status: str | None
    codings: tuple[Coding, ...] = ()
    names: tuple[str, ...] = ()  # CodeableConcept.text, coding displays, Medication names, reference display
    route: tuple[Coding, ...] = ()
    route_text: str | None = None
    authored: datetime | None = None  # request: authoredOn; administration/statement: effective start
    ended: datetime | None = None  # validityPeriod.end, dosage bounds end; effective end
    dose_value: float | None = None
    dose_unit: str | None = None
    kind: MedicationKind = "request"
    do_not_perform: bool = False  # MedicationRequest.doNotPerform: an order NOT to give the drug


class ObservationInput(NamedTuple):
    """One measured value: an Observation, or one component of a panel (blood pressure).

    A named tuple, like :class:`Reading`, rather than a frozen dataclass: one is built per reading of the
    record on every call, and a tuple is about four times cheaper to build (bench/README.md).
    """

    ref: str | None
    status: str | None
    codes: tuple[str, ...]  # LOINC codes
    value: float | None
    unit: str | None  # UCUM code, else the unit text
    time: datetime | None
    ref_low: float | None = None
    ref_high: float | None = None
    ref_unit: str | None = None
    # coded results (valueCodeableConcept codings and interpretation codings), for cultures
    value_codes: tuple[Coding, ...] = ()


@dataclass(frozen=True, slots=True)
class HistoryInput:
    kind: Literal["condition", "allergy"]
    codings: tuple[Coding, ...]
    text: str | None
    recorded: datetime | None
    verification: str | None = None
    ref: str | None = None
    clinical_status: str | None = None
    abated: datetime | None = None


@dataclass(frozen=True)
class ClinicalInput:
    now: datetime
    sex: str | None = None
    medications: tuple[MedicationInput, ...] = ()
    observations: tuple[ObservationInput, ...] = ()
    history: tuple[HistoryInput, ...] = ()
    missing: tuple[str, ...] = ()  # what could not be retrieved, in words ("laboratory results")
    ignored_orders: int = 0  # draft orders that could not be read (no medication, unparseable)
    # resources dropped because they belong to another patient: (resource type, count)
    other_patient: tuple[tuple[str, int], ...] = ()
    capped: tuple[str, ...] = ()  # what the data-access layer cut at a hard limit, in words
    # what could not be read: (kind, reason, count), e.g. ("temperature", "invalid status", 5)
    unreadable: tuple[tuple[str, str, int], ...] = ()
    duplicates: int = 0  # older versions of a resource listed more than once under one id: not used
    # medication records naming their drug only by a reference that could not be resolved: (why, count)
    unidentified_medications: tuple[tuple[str, int], ...] = ()


# --- output ----------------------------------------------------------------------------------------


class Reading(NamedTuple):
    """One usable reading in canonical units (immutable; a named tuple for the cost, see ObservationInput)."""

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
    matched_by: Literal["rxnorm", "atc", "name"]
    dose_value: float | None = None
    dose_unit: str | None = None
    kind: MedicationKind = "request"


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
class OtherCause:
    """An alternative explanation of fever or CK rise (the IEC's negative work-up), from structured data."""

    cause: str  # infection, serotonin-syndrome, malignant-hyperthermia, heat-illness, anticholinergic, ...
    label: str
    found: bool | None  # None: could not be checked from the data seen
    evidence: list[str] = field(default_factory=list)  # plain descriptions; may quote record text
    # suggests the cause without documenting it (an empiric antimicrobial): shown, never counted as found
    possible: list[str] = field(default_factory=list)
    negative: list[str] = field(default_factory=list)  # results that speak against it (negative cultures)


@dataclass
class DataQuality:
    used: int = 0
    entered_in_error: int = 0
    not_final: int = 0
    unusable: int = 0  # no value, unknown unit, no time, in the future
    # concept -> values outside its plausible range (data/thresholds.toml [plausible]), as given: not used
    implausible: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    capped: dict[str, int] = field(default_factory=dict)  # concept -> older readings left out at the cap


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
    onset: datetime | None = None  # first finding of the episode (first febrile reading or CK rise)
    onset_kind: Literal["fever", "ck"] | None = None
    first_exposure: Exposure | None = None  # earliest exposure in effect before onset
    # findings (fever / CK rise) already present before any dopamine antagonist: the draft cannot explain them
    findings_before_exposure: bool = False
    other_causes: list[OtherCause] = field(default_factory=list)
    other_patient: list[tuple[str, int]] = field(default_factory=list)
    capped: list[str] = field(default_factory=list)
    # records of one drug that disagree, and which one the rules used (docs/clinical-rules.md "Reconciliation")
    conflicts: list[str] = field(default_factory=list)
    # CK rises before any exposure, without fever: not this episode's (docs/clinical-rules.md "Time order")
    ck_set_aside: list[Reading] = field(default_factory=list)
    # extreme hyperthermia with no CK counted in the episode: "pending" (a result not yet final) or "missing"
    ck_state: Literal["pending", "missing"] | None = None
    unreadable: list[tuple[str, str, int]] = field(default_factory=list)  # (kind, reason, count)
    duplicates: int = 0
    # medication records whose drug could not be identified (the input's, passed through): (why, count)
    unidentified_medications: list[tuple[str, int]] = field(default_factory=list)
    # baselines the autonomic and hypermetabolism criteria compared with (concept -> median reading)
    baselines: dict[str, Reading] = field(default_factory=dict)

    @property
    def score(self) -> int:
        return sum(c.points for c in self.criteria)

    def criterion(self, name: str) -> Criterion:
        return next(c for c in self.criteria if c.name == name)

    @property
    def draft_exposures(self) -> list[Exposure]:
        return [e for e in self.exposures if e.is_draft and e.role == "antagonist"]
