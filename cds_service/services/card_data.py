"""The data line every card ends with: what was used, what was ignored and why, what could not be read.

Counts and kinds only, never a resource id: "63 readings used; 1 temperature reading could not be read:
invalid status; …". The line is never cut from a card (docs/clinical-rules.md "Cards").
"""

from __future__ import annotations

from cds_service.clinical.model import Assessment
from cds_service.clinical.valuesets import load
from cds_service.services.markup import md

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


def unreadable(a: Assessment) -> list[str]:
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


def implausible(a: Assessment) -> list[str]:
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


def data_lines(a: Assessment, zone_word: str) -> list[str]:
    """The data line (and the "Incomplete" line when something could not be retrieved)."""
    q = a.quality
    data = [f"{q.used} readings used"]
    if q.entered_in_error:
        data.append(f"{q.entered_in_error} entered-in-error ignored")
    if q.not_final:
        data.append(f"{q.not_final} not final (preliminary, cancelled…) ignored")
    if q.unusable:
        data.append(f"{q.unusable} without a usable value, unit or time ignored")
    data += implausible(a)
    data += unreadable(a)
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
    if not (a.unreadable or a.missing or a.ignored_orders or a.unidentified_medications):
        data.append("no resource unreadable")
    data.append(f"times {zone_word}")
    lines = ["**Data:** " + "; ".join(data) + "."]
    if a.missing:
        lines.append(f"**Incomplete:** could not retrieve {md(', '.join(a.missing), 400)}; nothing is claimed "
                     "about them.")
    return lines
