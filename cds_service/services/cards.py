"""Turn an :class:`~cds_service.clinical.Assessment` into CDS Hooks 2.0 cards.

Pure presentation: the wording says "possible NMS", shows each criterion with value, unit, time and
points, names what the record cannot show, and never claims a diagnosis or data that were not seen.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from typing import Any

from cds_service import __version__
from cds_service.clinical.model import Assessment, Criterion, Exposure
from cds_service.clinical.rules import fmt_reading
from cds_service.clinical.valuesets import LOINC, load
from cds_service.protocol import models
from cds_service.services.markup import md, plain, ref

CARD_NAMESPACE = uuid.UUID("6f1c1e52-3c1b-4a8e-9a55-2f0c7f4b9d10")
IEC_URL = "https://pubmed.ncbi.nlm.nih.gov/21733489/"
SEED_URL = "https://doi.org/10.1503/cmaj.091442"
OVERRIDE_SYSTEM = "https://github.com/nms-cds/nms-cds/override-reason"
SOURCE_LABEL = "nms-cds: NMS pattern check (IEC consensus criteria)"
SUMMARY_LIMIT = 139  # "<140 characters"

OVERRIDE_REASONS = (
    ("nms-excluded-at-bedside", "NMS excluded at the bedside (no rigidity or mental status change)"),
    ("other-cause-identified", "Another cause of fever or CK rise has been identified"),
    ("benefit-outweighs-risk", "Benefit of the dopamine antagonist outweighs the risk; monitoring in place"),
    ("already-managed", "Already recognised and being managed"),
    ("data-incorrect", "The data shown are incorrect or outdated"),
)
# A card for dopaminergic withdrawal alone names no dopamine antagonist.
_WITHDRAWAL_REASONS = {"benefit-outweighs-risk": "Stopping the dopaminergic drug was intended; its withdrawal is "
                       "being monitored"}
_LAB_LABELS = {"2157-6": "CK", "2498-4": "serum iron", "6690-2": "WBC", "2160-0": "creatinine",
               "2823-3": "potassium", "14798-3": "serum iron", "1988-5": "CRP"}


def card_uuid(hook_instance: str, kind: str) -> str:
    """Stable per hook invocation and card kind, so feedback can be tied back to the card."""
    return str(uuid.uuid5(CARD_NAMESPACE, f"{hook_instance}:{kind}"))


def _drug_names(a: Assessment) -> str:
    drafts = sorted({e.ingredient for e in a.exposures if e.is_draft and e.role == "antagonist"})
    others = sorted({e.ingredient for e in a.exposures if e.role in ("antagonist", "withdrawal")} - set(drafts))
    names = drafts + others
    withdrawal = {e.ingredient for e in a.exposures if e.role == "withdrawal"}
    return " + ".join(n + (" stopped" if n in withdrawal else "") for n in names[:2]) or "dopamine antagonist"


def summary(a: Assessment) -> str:
    hyper = a.criterion("hyperthermia")
    parts: list[str] = [_drug_names(a)]
    febrile = [r for r in hyper.evidence if r.value > load().thresholds["hyperthermia"]["threshold_cel"]]
    if febrile:
        peak = max(r.value for r in febrile)
        parts.append(f"T {peak:.1f} °C" + (f" ×{len(febrile)}" if len(febrile) > 1 else ""))
    if a.ck_peak is not None and a.ck_uln and a.ck_peak.value > a.ck_uln:
        ratio = a.ck_peak.value / a.ck_uln
        # whole multiples from 10, else one decimal rounded down: 3.96 is never shown as "4×ULN"
        shown = f"{ratio:.0f}" if ratio >= 10 else f"{math.floor(ratio * 10) / 10:.1f}".removesuffix(".0")
        parts.append(f"CK {a.ck_peak.value:,.0f} U/L ({shown}×ULN)")
    if a.ck_state is not None and a.indicator == "critical":
        parts.append("CK pending" if a.ck_state == "pending" else "CK not measured: order stat")
    iron = next((f for f in a.findings if f.name == "iron-low-or-falling" and f.present), None)
    if iron and iron.evidence:
        low = min(iron.evidence, key=lambda r: r.value)
        parts.append(f"iron {low.value:.1f} µmol/L")
    if a.indicator == "info":
        text = f"NMS check incomplete for {parts[0]}: could not retrieve " + plain(", ".join(a.missing), 100)
    elif a.indicator == "warning" and len(parts) == 1 and a.history:
        text = f"Previous NMS on record: review before signing {parts[0]}"
    else:
        prefix = "Possible NMS" if a.indicator == "critical" else "Possible early NMS pattern"
        text = f"{prefix}: " + " + ".join(parts)
        while len(text) > SUMMARY_LIMIT and len(parts) > 1:
            parts.pop()
            text = f"{prefix}: " + " + ".join(parts)
    return text if len(text) <= SUMMARY_LIMIT else text[: SUMMARY_LIMIT - 1] + "…"


def _met(c: Criterion) -> str:
    return {True: "**yes**", False: "no", None: "cannot judge"}[c.met]


_KIND = {"request": "order", "administration": "dose given (MedicationAdministration)",
         "statement": "reported (MedicationStatement)"}


def _exposure_line(e: Exposure) -> str:
    bits = [f"**{e.ingredient}**" + (f" — {md(e.label)}" if e.label.lower() != e.ingredient else "")]
    status = md(e.status, 24) if e.status else None
    state = "draft order (being signed)" if e.is_draft else f"{_KIND[e.kind]} {status or 'status unknown'}"
    if e.role == "withdrawal":
        state = f"dopaminergic drug {status or 'stopped'}" + (
            f", ended {e.ended.strftime('%Y-%m-%d %H:%M')} UTC" if e.ended else "")
    bits.append(state)
    if e.route:
        bits.append(e.route.upper() if e.route in ("im", "iv", "sc") else e.route)
    if e.long_acting:
        bits.append("long-acting injectable")
    if e.authored and not e.is_draft:
        verb = {"request": "authored", "administration": "given", "statement": "from"}[e.kind]
        bits.append(f"{verb} {e.authored.strftime('%Y-%m-%d %H:%M')} UTC")
    if e.ref:
        bits.append(f"`{ref(e.ref)}`")
    if e.matched_by == "name":
        bits.append("matched by drug name")
    elif e.matched_by == "atc":
        bits.append("matched by ATC code")
    return "- " + "; ".join(bits)


def _timeline(a: Assessment) -> list[str]:
    if a.onset is None:
        return []
    what = "first febrile reading of the episode" if a.onset_kind == "fever" else "first CK ≥ 4×ULN"
    onset = f"onset ({what}) {a.onset.strftime('%Y-%m-%d %H:%M')} UTC"
    first = a.first_exposure
    lines = [""]
    if first is None or a.hours_exposure_to_fever is None:
        lines.append(f"**Time line:** {onset}; no start time recorded for the exposure before it.")
    elif first.role == "withdrawal" and first.ended is not None:
        lines.append(f"**Time line:** {first.ingredient} stopped {first.ended.strftime('%Y-%m-%d %H:%M')} UTC "
                     f"(dopaminergic withdrawal) → {onset}: {a.hours_exposure_to_fever:.0f} h between.")
    elif first.authored is not None:
        lines.append(f"**Time line:** first exposure {first.ingredient} {first.authored.strftime('%Y-%m-%d %H:%M')}"
                     f" UTC → {onset}: {a.hours_exposure_to_fever:.0f} h between.")
    if a.ck_set_aside:
        lines.append("CK rise before the exposure, without fever, set aside (not this episode's): "
                     + ", ".join(fmt_reading(r) for r in a.ck_set_aside[:3])
                     + "; the episode opened with the first finding after the exposure.")
    return lines


def _other_causes(a: Assessment) -> list[str]:
    if not a.other_causes:
        return []
    lines = ["", "**Other causes weighed** (IEC: fever and CK rise must not be better explained by another cause):"]
    for cause in a.other_causes:
        negative = ("; " + "; ".join(md(e, 120) for e in cause.negative)) if cause.negative else ""
        if cause.found:
            lines.append(f"- {cause.label}: **found** — "
                         + "; ".join(md(e, 200) for e in [*cause.evidence, *cause.possible]) + negative)
        elif cause.possible:
            lines.append(f"- {cause.label}: **possible** — " + "; ".join(md(e, 200) for e in cause.possible)
                         + negative + " (not counted as another cause)")
        elif cause.negative:
            lines.append(f"- {cause.label}: not found — " + "; ".join(md(e, 120) for e in cause.negative))
    checked = [c.label.lower() for c in a.other_causes if c.found is False and not c.possible and not c.negative]
    if checked:
        lines.append("- Not found in the data seen: " + ", ".join(checked) + ".")
    unchecked = [c.label.lower() for c in a.other_causes if c.found is None]
    heat_found = any(c.cause == "heat-illness" and c.found for c in a.other_causes)
    never = "illicit drugs and toxins, neurological causes (imaging, CSF), " + (
        "" if heat_found else "heat exposure not coded, ") + "rigidity and mental status"
    lines.append("- Could not be checked: " + ", ".join([*unchecked, never]) + ".")
    return lines


def _ck_stat(a: Assessment) -> list[str]:
    if a.ck_state is None or a.indicator != "critical":
        return []
    state = "a CK result is **pending**" if a.ck_state == "pending" else "**no CK has been measured** in this episode"
    return ["", f"**CK stat:** extreme hyperthermia with autonomic signs on a dopamine antagonist; {state}. "
            "Do not wait for it to act: the pattern is already critical. Order CK (and creatinine, potassium) "
            "stat; CK peaks about day 2 after fever onset and can be normal early."]


def detail(a: Assessment) -> str:
    th = load().thresholds
    lines: list[str] = []
    if a.indicator == "info":
        lines.append("**The NMS check could not be completed.** A dopamine antagonist is being ordered, but "
                     f"these data could not be retrieved: {', '.join(a.missing)}. No finding is claimed.")
    else:
        lines.append("**Pattern consistent with possible neuroleptic malignant syndrome — assess rigidity and "
                     "mental status at the bedside.** This is decision support, not a diagnosis.")
    if a.reasons:
        lines.append("")
        lines.append("**Why this card:** " + "; ".join(md(r, 400) for r in a.reasons) + ".")
    lines += ["", "| IEC criterion (structured part) | Met | Evidence | Points |", "|---|---|---|---|"]
    for c in a.criteria:
        lines.append(f"| {c.label} | {_met(c)} | {c.summary.replace('|', '/')} | {c.points}/{c.points_possible} |")
    possible = sum(c.points_possible for c in a.criteria)
    lines.append(f"| **Score from the record** | | | **{a.score}/{possible}** |")
    lines += ["", "The record cannot show rigidity (17 points), mental status change (13) or a negative work-up "
              "for infectious, toxic, metabolic and neurologic causes (7): assess them at the bedside. The IEC "
              "points total 100; a validated cut-off of 74 is reported (Gurrera 2017, cut-off only partially "
              "verified). Fever thresholds assume oral readings."]
    present = [f for f in a.findings if f.name != "iron-nms-range"]
    if present:
        lines += ["", "**Acute-phase evidence** (supporting, never diagnostic; serum iron is low in 32 of 33 NMS "
                  "patients, mean 5.38 µmol/L, normal 13-32 — Anglin 2010):"]
        lines += [f"- {f.summary}" + (" — **abnormal**" if f.present else "") for f in present]
    if a.exposures:
        lines += ["", "**Drug exposure:**"]
        lines += [_exposure_line(e) for e in a.exposures if e.role in ("antagonist", "withdrawal")]
    if a.conflicts:
        lines += ["", "**Records disagree:** " + "; ".join(md(c, 300) for c in a.conflicts[:4]) + "."]
    lines += _ck_stat(a)
    if a.indicator != "info":  # an incomplete check claims no finding, so it weighs no cause either
        lines += _timeline(a)
        lines += _other_causes(a)
    if a.risk_factors:
        lines += ["", "**Risk factors:** " + "; ".join(a.risk_factors) + "."]
    if a.history:
        lines += ["", "**Previous NMS on record:**"]
        lines += [f"- {md(h.description, 200)}" + (f", recorded {h.recorded.strftime('%Y-%m-%d')}" if h.recorded
                                                    else "") + (f" (`{ref(h.ref)}`)" if h.ref else "")
                  for h in a.history]
        lines.append("Re-challenge only ≥ 2 weeks after full resolution, with a lower-potency agent, slow "
                     "titration and close monitoring.")
    temps = a.readings.get("body-temperature", [])
    if temps:
        lines += ["", f"**Temperatures, last {th['window']['acute_hours']} h:** "
                  + ", ".join(fmt_reading(r) for r in temps[-8:])]
    cks = a.readings.get("creatine-kinase", [])
    if cks:
        lines += ["", f"**CK, last {th['window']['lab_days']} days:** " + ", ".join(fmt_reading(r) for r in cks[-6:])]
    if a.im_ck_artefact:
        lines += ["", "CK rose within 72 h of an intramuscular injection without fever: injections raise CK by "
                  "themselves, so this CK alone does not indicate NMS."]
    q = a.quality
    data = [f"{q.used} readings used"]
    if q.entered_in_error:
        data.append(f"{q.entered_in_error} entered-in-error ignored")
    if q.not_final:
        data.append(f"{q.not_final} not final (preliminary, cancelled…) ignored")
    if q.unusable:
        data.append(f"{q.unusable} without a usable value, unit or time ignored")
    data += _implausible(a)
    data += _unreadable(a)
    unreadable_drafts = sum(n for kind, _, n in a.unreadable if kind == "draft-order")
    if a.ignored_orders > unreadable_drafts:
        data.append(f"{a.ignored_orders - unreadable_drafts} draft order(s) without a readable medication ignored")
    if a.duplicates:
        data.append(f"{a.duplicates} older version(s) of a resource listed more than once under one id not used")
    if a.other_patient:
        dropped = sum(n for _, n in a.other_patient)
        data.append(f"{dropped} resource(s) of another patient dropped and not used ("
                    + ", ".join(f"{n} {md(t, 40)}" for t, n in a.other_patient) + ")")
    for why, n in a.unidentified_medications:
        data.append(f"{n} medication record{'s' if n != 1 else ''} could not be identified ({md(why, 80)})")
    if a.capped:
        data.append("capped at the service's limits: " + "; ".join(md(c, 120) for c in a.capped))
    lines += ["", "**Data:** " + "; ".join(data) + "."]
    if a.missing:
        lines.append(f"**Incomplete:** could not retrieve {md(', '.join(a.missing), 400)}; nothing is claimed "
                     "about them.")
    if a.draft_exposures and not any(e.ref for e in a.draft_exposures):
        lines.append("The draft order has no id, so it cannot be removed from here: cancel it in the order form.")
    return "\n".join(lines)


# What could not be read, by kind (extract.UNREAD_KINDS): (one, several).
_UNREAD_WORDS = {
    "temperature": ("temperature reading", "temperature readings"),
    "heart-rate": ("heart rate reading", "heart rate readings"),
    "respiratory-rate": ("respiratory rate reading", "respiratory rate readings"),
    "blood-pressure": ("blood pressure reading", "blood pressure readings"),
    "ck": ("CK result", "CK results"),
    "lab": ("laboratory result", "laboratory results"),
    "culture": ("culture result", "culture results"),
    "observation": ("observation", "observations"),
    "medication": ("medication record", "medication records"),
    "draft-order": ("draft order", "draft orders"),
    "condition": ("condition", "conditions"),
    "allergy": ("allergy record", "allergy records"),
}


def _unreadable(a: Assessment) -> list[str]:
    """One phrase per kind of resource that could not be read: "5 temperature readings could not be read:
    invalid status" (several reasons: each with its count)."""
    by_kind: dict[str, list[tuple[str, int]]] = {}
    for kind, reason, n in a.unreadable:
        by_kind.setdefault(kind, []).append((reason, n))
    out = []
    for kind, reasons in by_kind.items():
        total = sum(n for _, n in reasons)
        one, several = _UNREAD_WORDS.get(kind, ("resource", "resources"))
        why = md(reasons[0][0], 40) if len(reasons) == 1 else ", ".join(f"{n} {md(r, 40)}" for r, n in reasons)
        out.append(f"{total} {one if total == 1 else several} could not be read: {why}")
    return out


def _implausible(a: Assessment) -> list[str]:
    """Values outside the plausible range of their concept (data/thresholds.toml [plausible]), as recorded."""
    plausible = load().thresholds.get("plausible", {})
    out = []
    for concept, values in sorted(a.quality.implausible.items()):
        low, high = plausible.get(concept, (None, None))
        shown = ", ".join(f"{v:g} {md(u, 16)}" for v, u in sorted(values)[:6]) + (" …" if len(values) > 6 else "")
        unit = "°C" if concept == "body-temperature" else ""
        bounds = f" ({low:g}–{high:g} {unit})".replace(" )", ")") if low is not None else ""
        words = "temperature" if concept == "body-temperature" else concept.replace("-", " ")
        out.append(f"{len(values)} {words} value(s) outside the plausible range{bounds} not used: {shown}")
    return out


def _service_request(code: str, patient_id: str) -> models.FhirResource:
    vs = load()
    concept = vs.observation(code)
    display = concept.display.split(" (LOINC")[0] if concept else code
    return models.FhirResource.model_validate({
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "order",
        "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "108252007",
                                  "display": "Laboratory procedure"}]}],
        "code": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
        "subject": {"reference": f"Patient/{patient_id}"},
        "reasonCode": [{"text": "Possible neuroleptic malignant syndrome"}],
    })


def suggestions(a: Assessment, hook_instance: str, patient_id: str) -> list[models.Suggestion]:
    out: list[models.Suggestion] = []
    deletable = [e for e in a.draft_exposures if e.ref]
    if deletable and a.indicator in ("critical", "warning"):
        names = ", ".join(sorted({e.ingredient for e in deletable}))
        out.append(models.Suggestion(
            label=f"Remove the draft {names} order",
            uuid=card_uuid(hook_instance, "suggestion:remove-draft"),
            isRecommended=a.indicator == "critical",
            actions=[models.Action(type="delete", description=f"Remove draft order for {plain(e.label)}",
                                   resourceId=e.ref) for e in deletable],
        ))
    if a.missing_labs and a.indicator in ("critical", "warning"):
        labels = ", ".join(dict.fromkeys(_LAB_LABELS.get(c, c) for c in a.missing_labs))
        out.append(models.Suggestion(
            label=f"Order {labels}",
            uuid=card_uuid(hook_instance, "suggestion:order-labs"),
            actions=[models.Action(type="create", description=f"Order {_LAB_LABELS.get(c, c)} (LOINC {c})",
                                   resource=_service_request(c, patient_id)) for c in a.missing_labs],
        ))
    return out


_SOURCE = models.Source(label=SOURCE_LABEL, url=IEC_URL)


def _source() -> models.Source:
    """The card's source, its label naming the knowledge version the card was built with (package version and
    site file: cds_service/knowledge)."""
    version = load().knowledge_version or f"{__version__}+default"
    return _SOURCE.model_copy(update={"label": f"{SOURCE_LABEL}; knowledge {version}"})
_LINKS = (
    models.Link(label="IEC consensus criteria for NMS (Gurrera 2011)", url=IEC_URL, type="absolute"),
    models.Link(label="NMS: a neuroimmunologic hypothesis (Anglin 2010, serum iron)", url=SEED_URL, type="absolute"),
)

# The override reasons offered: the usual ones, and those of a card for dopaminergic withdrawal alone.
_OVERRIDES = {withdrawal_only: tuple(
    models.OverrideReason(system=OVERRIDE_SYSTEM, code=c,
                          display=_WITHDRAWAL_REASONS.get(c, d) if withdrawal_only else d)
    for c, d in OVERRIDE_REASONS) for withdrawal_only in (False, True)}


def build_card(a: Assessment, hook_instance: str, patient_id: str,
               extra_suggestions: Sequence[models.Suggestion] = ()) -> models.Card | None:
    """The card for ``a`` (``None``: no finding, no card). ``hook_instance`` seeds the card and suggestion uuids
    (a hook policy may pass a stable evidence key instead); ``extra_suggestions`` are a hook policy's own,
    appended after these."""
    if a.indicator is None:
        return None
    override: list[models.OverrideReason] | None = None
    if a.indicator != "info":
        withdrawal_only = bool(a.exposures) and all(e.role != "antagonist" for e in a.exposures)
        override = list(_OVERRIDES[withdrawal_only])
    suggested = suggestions(a, hook_instance, patient_id) + list(extra_suggestions)
    return models.Card(
        uuid=card_uuid(hook_instance, f"nms:{a.indicator}"),
        summary=summary(a),
        indicator=a.indicator,
        detail=detail(a),
        source=_source(),
        links=list(_LINKS),
        overrideReasons=override,
        suggestions=suggested or None,
        selectionBehavior="any" if suggested else None,
    )


def build_cards(a: Assessment, hook_instance: str, patient_id: str,
                extra_suggestions: Sequence[models.Suggestion] = ()) -> list[dict[str, Any]]:
    """The cards for ``a`` as JSON: none, or the one of :func:`build_card` (absent members left out)."""
    card = build_card(a, hook_instance, patient_id, extra_suggestions)
    return [] if card is None else [card.model_dump(exclude_none=True)]
