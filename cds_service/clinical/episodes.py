"""Episodes: the onset of the *current* episode, the first finding an exposure can explain.

Onset is the first febrile reading of the febrile run (reaching back through febrile readings at most
``onset.episode_gap_hours`` apart) or the first CK >= 4 x ULN when that comes first. A CK rise **without
fever before any exposure** (after surgery, a fall, a seizure, alcohol withdrawal, an injection) is not the
drug's doing and does not anchor a later episode: it is set aside, and the first finding after the exposure —
fever, or a new CK rise above the set-aside level — opens an episode judged in full, with only its own CK
values. A fever before the exposure still anchors the episode (the abnormal baseline of docs/clinical-rules.md
"Indicator policy"); its "Time order" has the clinical reason and the sources.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cds_service.clinical.model import Exposure, Reading
from cds_service.clinical.valuesets import ValueSets


@dataclass(frozen=True)
class Episode:
    onset: datetime | None = None
    kind: str | None = None  # "fever" or "ck"
    explaining: list[Exposure] = field(default_factory=list)  # in effect before onset (drafts never)
    set_aside: list[Reading] = field(default_factory=list)  # pre-exposure afebrile CK rises
    ck_from: datetime | None = None  # CK values before this belong to before the episode


def uln_fallback(sex: str | None, vs: ValueSets) -> float:
    th = vs.thresholds["ck"]
    if sex == "female":
        return float(th["uln_fallback_female"])
    if sex == "male":
        return float(th["uln_fallback_male"])
    return float(th["uln_fallback_unknown"])


def fever_onset(temps: Sequence[Reading], febrile: Sequence[Reading], vs: ValueSets) -> datetime | None:
    """The first febrile reading of the current febrile run, reaching back through earlier febrile readings
    no more than ``onset.episode_gap_hours`` apart (also before the acute window)."""
    if not febrile:
        return None
    gap = timedelta(hours=vs.thresholds["onset"]["episode_gap_hours"])
    threshold = vs.thresholds["hyperthermia"]["threshold_cel"]
    fever = febrile[0].time
    for reading in reversed([r for r in temps if r.value > threshold and r.time < fever]):
        if fever - reading.time > gap:
            break
        fever = reading.time
    return fever


def find_episode(temps: Sequence[Reading], febrile: Sequence[Reading], cks: Sequence[Reading], sex: str | None,
                 vs: ValueSets, explaining_at: Callable[[datetime], list[Exposure]]) -> Episode:
    """The current episode. ``explaining_at(t)`` gives the exposures (no drafts) in effect before ``t``."""
    fever = fever_onset(temps, febrile, vs)
    multiple = vs.thresholds["ck"]["uln_multiple"]
    fallback = uln_fallback(sex, vs)
    rises = [(r.value / (r.uln or fallback), r) for r in cks if r.value >= multiple * (r.uln or fallback)
             and (fever is None or r.time < fever)]
    candidates: list[tuple[datetime, str, float, Reading | None]] = [(r.time, "ck", ratio, r) for ratio, r in rises]
    if fever is not None:
        candidates.append((fever, "fever", 0.0, None))
    if not candidates:
        return Episode()
    set_aside: list[Reading] = []
    level = 0.0  # the highest set-aside CK, in multiples of ULN: a new rise must exceed it
    for time, kind, ratio, reading in candidates:
        if kind == "ck" and set_aside and ratio <= level:
            continue  # the tail of the rise set aside, not a new one
        explaining = explaining_at(time)
        if explaining:
            return Episode(time, kind, explaining, set_aside, time if set_aside else None)
        if kind == "fever" or reading is None:
            break  # a fever before any exposure anchors the episode: the abnormal baseline
        set_aside.append(reading)
        level = max(level, ratio)
    first = candidates[0]
    return Episode(first[0], first[1])
