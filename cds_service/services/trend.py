"""The trend view's data: the patient-view engine's assessment of one patient, as series, thresholds and bands.

One source of truth: the same gather → extract → assess steps as the ``patient-view`` hook (no prefetch, the
FHIR server read with the SMART token), and the thresholds from ``clinical/data/thresholds.toml``; the page
only draws what this returns. Nothing here decides anything the clinical core did not.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cds_service.clinical.model import Assessment, Reading
from cds_service.clinical.valuesets import load as load_valuesets
from cds_service.protocol.parse import HookRequest
from cds_service.services.engine import CallReport, Engine, HookPolicy

#: The charts, in the order the page shows them: (chart id, title, concepts drawn, unit shown).
CHARTS: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("temperature", "Temperature", ("body-temperature",), "°C"),
    ("heart-rate", "Heart rate", ("heart-rate",), "/min"),
    ("blood-pressure", "Blood pressure", ("systolic-bp", "diastolic-bp"), "mmHg"),
    ("ck", "Creatine kinase (CK)", ("creatine-kinase",), "U/L"),
    ("iron", "Serum iron", ("serum-iron",), "µmol/L"),
    ("wbc", "White cells (WBC)", ("wbc",), "×10⁹/L"),
    ("crp", "C-reactive protein (CRP)", ("crp",), "mg/L"),
)
SERIES_LABELS = {"systolic-bp": "systolic", "diastolic-bp": "diastolic"}


@dataclass(frozen=True)
class TrendRequest:
    fhir_server: str
    patient_id: str
    token: str | None


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt is not None else None


def _points(readings: list[Reading]) -> list[dict[str, Any]]:
    return [{"t": _iso(r.time), "v": r.value, "unit": r.unit} for r in readings]


def thresholds(a: Assessment) -> dict[str, list[dict[str, Any]]]:
    """Each chart's threshold lines, from the thresholds file and the baselines the criteria used."""
    th = load_valuesets().thresholds
    out: dict[str, list[dict[str, Any]]] = {chart: [] for chart, *_ in CHARTS}
    hyper = th["hyperthermia"]
    out["temperature"] += [
        {"value": hyper["threshold_cel"], "label": f"> {hyper['threshold_cel']:.1f} °C (hyperthermia)"},
        {"value": hyper["extreme_cel"], "label": f"≥ {hyper['extreme_cel']:.1f} °C (extreme)"},
    ]
    hr = a.baselines.get("heart-rate")
    if hr is not None:
        limit = hr.value * (1 + th["hypermetabolism"]["hr_fraction"])
        out["heart-rate"].append({"value": round(limit, 1),
                                  "label": f"baseline {hr.value:.0f} + {th['hypermetabolism']['hr_fraction']:.0%}"})
    sbp = a.baselines.get("systolic-bp")
    if sbp is not None:
        limit = sbp.value * (1 + th["autonomic"]["bp_elevation_fraction"])
        out["blood-pressure"].append(
            {"value": round(limit, 1),
             "label": f"systolic baseline {sbp.value:.0f} + {th['autonomic']['bp_elevation_fraction']:.0%}"})
    if a.ck_uln:
        multiple = th["ck"]["uln_multiple"]
        out["ck"].append({"value": round(a.ck_uln * multiple, 1),
                          "label": f"{multiple:g} × ULN ({a.ck_uln:,.0f} U/L)"})
    iron = th["iron"]
    out["iron"] += [{"value": iron["normal_low_umol"], "label": f"< {iron['normal_low_umol']:g} low"},
                    {"value": iron["nms_range_umol"], "label": f"≤ {iron['nms_range_umol']:g} NMS range"}]
    phase = th["acute_phase"]
    out["wbc"].append({"value": phase["wbc_high"], "label": f"≥ {phase['wbc_high']:g} leukocytosis"})
    out["crp"].append({"value": phase["crp_high"], "label": f"> {phase['crp_high']:g} raised"})
    return out


def view(a: Assessment, report: CallReport) -> dict[str, Any]:
    """The JSON the page draws (docs/trend-view.md describes each member)."""
    th = load_valuesets().thresholds
    lines = thresholds(a)
    charts = []
    for chart, title, concepts, unit in CHARTS:
        series = [{"concept": c, "label": SERIES_LABELS.get(c, title), "points": _points(a.readings.get(c, []))}
                  for c in concepts]
        charts.append({"id": chart, "title": title, "unit": unit, "series": series, "thresholds": lines[chart]})
    bands = [{"ingredient": e.ingredient, "role": e.role, "label": e.label, "drug_class": e.drug_class,
              "start": _iso(e.authored), "end": _iso(e.ended), "draft": e.is_draft, "kind": e.kind}
             for e in a.exposures]
    not_read = list(a.missing) + list(a.capped)
    not_read += [f"{n} {kind} not read ({why})" for kind, why, n in a.unreadable]
    not_read += [f"{n} medication record(s) not identified ({why})" for why, n in a.unidentified_medications]
    return {
        "now": _iso(a.now),
        "window": {"start": _iso(a.now - timedelta(days=th["window"]["lab_days"])), "end": _iso(a.now),
                   "vitals_start": _iso(a.now - timedelta(hours=th["window"]["acute_hours"]))},
        "indicator": a.indicator,
        "score": a.score,
        "reasons": list(a.reasons),
        "onset": _iso(a.onset),
        "onset_kind": a.onset_kind,
        "charts": charts,
        "exposures": bands,
        "criteria": [{"name": c.name, "label": c.label, "met": c.met, "points": c.points,
                      "points_possible": c.points_possible, "summary": c.summary} for c in a.criteria],
        "findings": [{"name": f.name, "present": f.present, "summary": f.summary} for f in a.findings],
        "other_causes": [{"cause": c.cause, "label": c.label, "found": c.found, "evidence": c.evidence,
                          "possible": c.possible, "negative": c.negative} for c in a.other_causes],
        "not_read": not_read,
        "sources": report.keys,
    }


def assessment(engine: Engine, policy: HookPolicy, req: TrendRequest) -> dict[str, Any]:
    """Read the patient's record from ``req.fhir_server`` with the SMART token and assess it as patient-view
    does (:class:`~cds_service.errors.PreconditionFailed` when no observation could be read)."""
    hook = HookRequest.server_read(policy.hook, req.patient_id, req.fhir_server, req.token, "Practitioner/trend-view")
    report = CallReport()
    a, _ = engine.evaluate(policy, hook, report)
    return view(a, report)


__all__ = ["CHARTS", "TrendRequest", "assessment", "thresholds", "view"]
