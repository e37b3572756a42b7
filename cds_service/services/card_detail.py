"""A card's detail, short enough to take in at a glance (docs/clinical-rules.md "Cards").

Two parts, split by a rule (``---``):

1. what to do now, and the three or four findings that decided the card, each with its time (at most about
   600 characters rendered);
2. below, compact: the rule that fired, the IEC criteria table, what the record cannot show, the acute-phase
   labs, the drugs, the other causes weighed, and the data line — what was used, ignored, and what could not be
   read. The data line is on every card; the whole detail stays within :data:`DETAIL_LIMIT` characters by
   leaving out the least needed sections of part 2 (the trend view shows the series).

Times are in the site's zone (:mod:`cds_service.services.card_time`); no resource id is written in the text.
"""

from __future__ import annotations

import re
from datetime import datetime, tzinfo

from cds_service.clinical.criteria import fmt
from cds_service.clinical.model import Assessment, Exposure, Reading
from cds_service.clinical.rules import fmt_reading
from cds_service.clinical.valuesets import load
from cds_service.services.card_data import data_lines
from cds_service.services.card_summary import CardKind, card_kind, uln_multiple
from cds_service.services.card_time import localise, when, zone_name
from cds_service.services.markup import md

DETAIL_LIMIT = 1500
FIRST_PART_LIMIT = 600  # rendered characters
PART_BREAK = "\n\n---\n\n"  # between what to do now and the compact evidence below
FINDINGS_SHOWN = 4
_ROUTES = {"im": "IM", "iv": "IV", "sc": "SC"}


def _t(moment: datetime | None, zone: tzinfo) -> str:
    return when(moment, zone) if moment else "time unknown"


def _reading(r: Reading, zone: tzinfo) -> str:
    return localise(fmt_reading(r), zone)


def _names(exposures: list[Exposure]) -> str:
    return ", ".join(dict.fromkeys(e.ingredient for e in exposures)) or "the dopamine antagonist"


# --- part 1: what to do now, and the decisive findings ----------------------------------------------


def _action(a: Assessment, kind: CardKind) -> list[str]:
    antagonists = [e for e in a.exposures if e.role == "antagonist"]
    drafts = a.draft_exposures
    if kind == "incomplete":
        return [f"**Before signing {_names(drafts)}: look at temperature and CK yourself.** The NMS check is "
                "incomplete and claims no finding; what it could not read is named below."]
    if kind == "rechallenge":
        return [f"**Before signing {_names(drafts)}: previous NMS documented — weigh the need for a dopamine "
                "antagonist.** No current NMS finding in the data seen; this card is about the history."]
    if kind == "withdrawal":
        stopped = _names([e for e in a.exposures if e.role == "withdrawal"])
        return [f"**Now: assess rigidity and mental status at the bedside; consider whether {stopped} should be "
                "restarted.** Possible NMS after a dopaminergic drug was stopped (withdrawal) — decision support, "
                "not a diagnosis."]
    drug = (f"reconsider the {_names(drafts)} order being signed" if drafts
            else f"consider holding {_names(antagonists)}")
    if kind == "critical":
        ck = "; order CK, creatinine and potassium stat" if a.ck_state else ""
        return [f"**Now: assess rigidity and mental status at the bedside; {drug}{ck}.** Possible neuroleptic "
                "malignant syndrome — decision support, not a diagnosis."]
    return [f"**Now: examine for rigidity and mental status change; repeat temperature and CK; {drug}.** "
            "Partial pattern of possible neuroleptic malignant syndrome — decision support, not a diagnosis."]


def _exposure_finding(a: Assessment, zone: tzinfo) -> str | None:
    e = a.first_exposure or (a.draft_exposures[0] if a.draft_exposures else None)
    if e is None:
        return None
    route = f" {_ROUTES.get(e.route, e.route)}" if e.route else ""
    gap = f", {a.hours_exposure_to_fever:.0f} h before onset" if a.hours_exposure_to_fever is not None else ""
    if e.role == "withdrawal":
        return f"{e.ingredient} (dopaminergic) stopped {_t(e.ended, zone)}{gap}"
    if e.is_draft:
        return f"{e.ingredient}{route}: draft order being signed"
    verb = {"request": "ordered", "administration": "given", "statement": "reported from"}[e.kind]
    depot = ", long-acting injectable" if e.long_acting else ""
    return f"{e.ingredient}{route}{depot} {verb} {_t(e.authored, zone)}{gap}"


def _findings(a: Assessment, zone: tzinfo) -> list[str]:
    th = load().thresholds
    out: list[str] = []
    hyper = a.criterion("hyperthermia")
    febrile = [r for r in hyper.evidence if r.value > th["hyperthermia"]["threshold_cel"]]
    temps = a.readings.get("body-temperature", [])
    if not febrile and temps:
        out.append(f"no fever: highest T {_reading(max(temps, key=lambda r: r.value), zone)}")
    if febrile:
        peak = max(febrile, key=lambda r: r.value)
        out.append(f"T {_reading(peak, zone)} — {len(febrile)} reading{'s' if len(febrile) > 1 else ''} > "
                   f"{th['hyperthermia']['threshold_cel']:.1f} °C in {th['window']['acute_hours']} h"
                   + (f", onset {_t(a.onset, zone)}" if a.onset and a.onset_kind == "fever" else ""))
    if a.ck_peak is not None and a.ck_uln:
        ratio = a.ck_peak.value / a.ck_uln
        out.append(f"CK {_reading(a.ck_peak, zone)} = {uln_multiple(ratio)} × ULN {a.ck_uln:,.0f} U/L "
                   f"(criterion ≥ {th['ck']['uln_multiple']:g} × ULN)")
    elif a.ck_state is not None and a.indicator == "critical":
        out.append(("a CK result is pending" if a.ck_state == "pending" else "no CK measured in this episode")
                   + ": do not wait for it; CK peaks about day 2 after fever onset and can be normal early")
    iron = next((f for f in a.findings if f.name == "iron-low-or-falling" and f.present), None)
    if iron is not None:
        out.append(localise(iron.summary, zone).replace("; NMS mean 5.38", ""))
    for name in ("autonomic", "hypermetabolism"):
        c = a.criterion(name)
        if c.met:
            out.append(("BP: " if name == "autonomic" else "") + localise(c.summary, zone))
    for f in a.findings:
        if f.present and f.name in ("leukocytosis", "crp-raised"):
            out.append(localise(f.summary, zone) + " (high)")
    lead = [f for f in (_exposure_finding(a, zone), _previous_finding(a, zone)) if f]
    return lead + out[: FINDINGS_SHOWN - len(lead)]


def _previous_finding(a: Assessment, zone: tzinfo) -> str | None:
    """A documented previous NMS decides a recurrence: it leads the findings."""
    return f"Previous NMS documented: {_history(a, zone)[0]}" if a.history else None


def _notes(a: Assessment) -> list[str]:
    notes = []
    if a.im_ck_artefact:
        notes.append("CK rose within 72 h of an intramuscular injection without fever: injections raise CK by "
                     "themselves, so this CK alone does not indicate NMS.")
    if a.findings_before_exposure:
        notes.append("Fever or CK rise already recorded before any dopamine antagonist: the drug being ordered "
                     "cannot explain it.")
    return notes


def _history(a: Assessment, zone: tzinfo) -> list[str]:
    return [md(h.description, 120) + (f", recorded {h.recorded.astimezone(zone).strftime('%-d %b %Y')}"
                                      if h.recorded else "") for h in a.history[:3]]


def _visible(lines: list[str]) -> int:
    """About the rendered length of ``lines`` (markup left out; entities counted whole: an overestimate)."""
    return sum(len(line.replace("**", "").replace("\\", "").removeprefix("- ")) + 1 for line in lines)


def first_part(a: Assessment, kind: CardKind, zone: tzinfo) -> list[str]:
    """What to do now and the decisive findings, within :data:`FIRST_PART_LIMIT` characters rendered: the
    last findings give way first (two stay), then long lines are cut."""
    lines = _first_part(a, kind, zone)
    while _visible(lines) > FIRST_PART_LIMIT and sum(line.startswith("- ") for line in lines) > 2:
        last = max(i for i, line in enumerate(lines) if line.startswith("- "))
        del lines[last]
    limit = 200
    while _visible(lines) > FIRST_PART_LIMIT and limit >= 60:
        lines = [md_cut(line, limit) for line in lines]
        limit -= 20
    return lines


def _first_part(a: Assessment, kind: CardKind, zone: tzinfo) -> list[str]:
    lines = _action(a, kind)
    if kind == "rechallenge":
        items = _history(a, zone)[:2]
        items.append("re-challenge only ≥ 2 weeks after full resolution, with a lower-potency agent, slow "
                     "titration and close monitoring")
    elif kind == "incomplete":
        items = []
    else:
        items = _findings(a, zone)
    if items:
        lines += [""] + [f"- {item}" for item in items]
    notes = _notes(a)
    if notes:
        lines += ["", " ".join(notes)]
    return lines


# --- part 2: compact evidence ------------------------------------------------------------------------


def _short_label(name: str, withdrawal: bool) -> str:
    th = load().thresholds
    return {
        "exposure": "Dopaminergic drug stopped before onset" if withdrawal else "Dopamine antagonist before onset",
        "hyperthermia": f"Hyperthermia > {th['hyperthermia']['threshold_cel']:.1f} °C "
                        f"×{th['hyperthermia']['min_readings']}",
        "ck": f"CK ≥ {th['ck']['uln_multiple']:g} × ULN",
        "autonomic": "Sympathetic lability (BP)",
        "hypermetabolism": f"Hypermetabolism (HR +{th['hypermetabolism']['hr_fraction'] * 100:.0f} %, "
                           f"RR +{th['hypermetabolism']['rr_fraction'] * 100:.0f} %)",
    }.get(name, name)


def _table(a: Assessment, withdrawal: bool) -> list[str]:
    met = {True: "**yes**", False: "no", None: "cannot judge"}
    lines = ["| IEC criterion | Met | Points |", "|---|---|---|"]
    lines += [f"| {_short_label(c.name, withdrawal)} | {met[c.met]} | {c.points} of {c.points_possible} |"
              for c in a.criteria]
    possible = sum(c.points_possible for c in a.criteria)
    lines.append(f"| **Score from the record** | | **{a.score} of {possible}** |")
    return lines


_NOT_IN_RECORD = ("Not in the record (assess at the bedside): rigidity 17, mental status 13, work-up 7 points; "
                  "reported cut-off 74 of 100.")
_LAB_NAMES = {"leukocytosis": ("WBC", "high"), "crp-raised": ("CRP", "high"), "albumin-low": ("albumin", "low")}


def _labs(a: Assessment, zone: tzinfo, head: str) -> list[str]:
    """The acute-phase labs not already among the decisive findings (``head``)."""
    shown: list[tuple[str, datetime]] = []
    for f in a.findings:
        if f.name in _LAB_NAMES and f.evidence and localise(f.summary, zone) not in head:
            name, word = _LAB_NAMES[f.name]
            r = f.evidence[0]
            shown.append((f"{name} {fmt(r.value, r.unit)}" + (f" ({word})" if f.present else ""), r.time))
    if not shown:
        return []
    times = {t for _, t in shown}
    text = (", ".join(s for s, _ in shown) + f", {_t(shown[0][1], zone)}" if len(times) == 1
            else ", ".join(f"{s} {_t(t, zone)}" for s, t in shown))
    return [f"**Acute-phase labs** (supporting, never diagnostic): {text}."]


def _exposure_state(e: Exposure, zone: tzinfo) -> str:
    route = f"{_ROUTES.get(e.route, e.route)} " if e.route else ""
    depot = "long-acting " if e.long_acting else ""
    if e.is_draft:
        return f"{route}{depot}draft order"
    if e.role == "withdrawal":
        return f"{route}{md(e.status, 24) if e.status else 'stopped'}" + (f" {_t(e.ended, zone)}" if e.ended else "")
    kind = {"request": "order", "administration": "dose", "statement": "reported"}[e.kind]
    return f"{route}{depot}{kind} {md(e.status, 24) if e.status else 'status unknown'}" + (
        f" {_t(e.authored, zone)}" if e.authored else "")


def _drugs(a: Assessment, zone: tzinfo) -> list[str]:
    """Each drug once, with its records' states (at most three, then how many more)."""
    by_drug: dict[str, list[Exposure]] = {}
    for e in a.exposures:
        by_drug.setdefault(e.ingredient, []).append(e)
    shown = []
    for drug, records in by_drug.items():
        states = list(dict.fromkeys(_exposure_state(e, zone) for e in records))
        more = f", {len(states) - 3} more" if len(states) > 3 else ""
        matched = next((e for e in records if e.matched_by != "rxnorm"), None)
        how = (f"; matched by {'drug name' if matched.matched_by == 'name' else 'ATC code'} "
               f"({md(matched.label, 60)})") if matched else ""
        role = {"withdrawal": " (dopaminergic)", "lithium": " (adds to the risk)"}.get(records[0].role, "")
        shown.append(f"{drug}{role}: " + ", ".join(states[:3]) + more + how)
    return ["**Drugs:** " + "; ".join(shown) + "."] if shown else []


_CAUSE_WORDS = {"infection": "infection", "anticholinergic": "anticholinergic toxicity",
                "rhabdomyolysis": "other rhabdomyolysis"}


def _other_causes(a: Assessment, kind: CardKind, zone: tzinfo) -> list[str]:
    return [localise(line, zone) for line in _causes(a, kind)]


def _causes(a: Assessment, kind: CardKind) -> list[str]:
    if not a.other_causes or kind in ("incomplete", "rechallenge"):  # no finding claimed: no cause to weigh
        return []
    lines = ["**Other causes** (IEC work-up):"]
    for cause in a.other_causes:
        negative = ("; " + "; ".join(md(e, 80) for e in cause.negative[:2])) if cause.negative else ""
        if cause.found:
            lines.append(f"- {cause.label}: **found** — "
                         + "; ".join(md(e, 100) for e in [*cause.evidence, *cause.possible][:2]) + negative)
        elif cause.possible:
            lines.append(f"- {cause.label}: **possible** — " + "; ".join(md(e, 100) for e in cause.possible[:2])
                         + negative + " (not counted)")
        elif cause.negative:
            lines.append(f"- {cause.label}: not found — " + "; ".join(md(e, 80) for e in cause.negative[:2]))
    checked = [_CAUSE_WORDS.get(c.cause, c.label.lower()) for c in a.other_causes
               if c.found is False and not c.possible and not c.negative]
    unchecked = [_CAUSE_WORDS.get(c.cause, c.label.lower()) for c in a.other_causes if c.found is None]
    heat_found = any(c.cause == "heat-illness" and c.found for c in a.other_causes)
    never = "toxins, neurological causes" + ("" if heat_found else ", uncoded heat exposure")
    found_any = len(lines) > 1
    lines.append(("Not found in the data seen: " + ", ".join(checked) + ". " if checked else "")
                 + "Could not be checked: " + ", ".join([*unchecked, never]) + ".")
    if not found_any and not unchecked:  # nothing found, everything checkable checked: one short line
        return [f"{lines[0]} none of the {len(checked)} checked found in the data seen; not checkable from the "
                f"record: {never}."]
    if not found_any:
        return [lines[0] + " " + lines[-1]]
    return [*lines[:-1], "", lines[-1]]  # a blank line: the last line is no continuation of the list


def _time_notes(a: Assessment, zone: tzinfo) -> list[str]:
    out = []
    if a.ck_set_aside:
        out.append("CK rise before the exposure, without fever, set aside (not this episode's): "
                   + ", ".join(_reading(r, zone) for r in a.ck_set_aside[:2]) + ".")
    if a.conflicts:
        out.append("**Records disagree:** "
                   + "; ".join(localise(md(no_ids(c), 200), zone) for c in a.conflicts[:2]) + ".")
    return [" ".join(out)] if out else []


def _previous(a: Assessment, kind: CardKind, zone: tzinfo) -> list[str]:
    if len(a.history) < 2 or kind == "rechallenge":  # the first is among the decisive findings
        return []
    return ["**Previous NMS documented:** " + "; ".join(_history(a, zone)) + "."]


def _risks(a: Assessment) -> list[str]:
    return ["**Risk factors:** " + "; ".join(a.risk_factors) + "."] if a.risk_factors else []


_RESOURCE_ID = re.compile(r"\b(Patient|Observation|Condition|AllergyIntolerance|Medication(?:Request|Statement|"
                          r"Administration)?|ServiceRequest|Encounter|Procedure)/[^\s,;:()]+")


def no_ids(text: str) -> str:
    """``text`` with every ``Type/id`` reference written as its resource type: no resource id in prose."""
    return _RESOURCE_ID.sub(r"\1", text)


def detail(a: Assessment, zone: tzinfo) -> str:
    kind = card_kind(a)
    withdrawal = kind == "withdrawal"
    head = "\n".join(first_part(a, kind, zone))
    reasons = [] if kind in ("rechallenge", "incomplete") else [
        "**Rule met:** " + "; ".join(localise(md(r, 300), zone) for r in a.reasons) + "."]
    # (priority, lines): the highest priorities are left out first when the detail would be too long
    sections: list[tuple[int, list[str]]] = [
        (2, reasons), (0, _table(a, withdrawal)), (1, [_NOT_IN_RECORD]), (0, _other_causes(a, kind, zone)),
        (0, _previous(a, kind, zone)), (0, _drugs(a, zone)), (1, _labs(a, zone, head)), (1, _time_notes(a, zone)),
        (1, _risks(a)),
    ]
    tail = data_lines(a, zone_name(zone, a.now))
    if a.draft_exposures and not any(e.ref for e in a.draft_exposures):
        tail.append("The draft order has no id, so it cannot be removed from here: cancel it in the order form.")

    def join(parts: list[tuple[int, list[str]]]) -> str:
        body = "\n\n".join("\n".join(lines) for _, lines in parts if lines)
        return no_ids(head + PART_BREAK + (body + "\n\n" if body else "") + "\n".join(tail))

    text = join(sections)
    # the least needed first (highest priority number, later section first); the table and the data stay
    for index in sorted(range(len(sections)), key=lambda i: (-sections[i][0], -i)):
        if len(text) <= DETAIL_LIMIT or sections[index][0] == 0:
            break
        sections[index] = (sections[index][0], [])
        text = join(sections)
    limit = 240
    while len(text) > DETAIL_LIMIT and limit >= 80:  # still too long: shorten part 2's long lines, not the table
        sections = [(p, lines if i == 1 else [md_cut(line, limit) for line in lines])
                    for i, (p, lines) in enumerate(sections)]
        text = join(sections)
        limit -= 40
    return text


def md_cut(line: str, limit: int) -> str:
    """``line`` (markdown written here) cut at a word before ``limit`` characters, with "…"."""
    if len(line) <= limit:
        return line
    cut = line[: limit - 1].rsplit(" ", 1)[0]
    return cut + ("**" if cut.count("**") % 2 else "") + " …"
