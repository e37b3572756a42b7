"""Reconciliation: among the orders, doses given and statements for one drug, the newest dated record of what
the patient actually takes wins.

A newer MedicationStatement that says the drug was stopped or is not taken (a medication reconciliation, a
patient's report) ends an older order or statement that still says ``active``: an antagonist exposure ends
there, and a dopaminergic drug stopped there is a withdrawal counted from that stop. The disagreement is kept
as a sentence for the card. docs/clinical-rules.md "Reconciliation" has the policy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime

from cds_service.clinical.common import EXCLUDED_STATUSES, FUTURE_SKEW, ONGOING_STATUSES, when_text
from cds_service.clinical.model import MedicationInput

# MedicationStatement statuses that say the patient does not take the drug (now): FHIR R4
# medication-statement-status "stopped" (no longer taken), "not-taken" (not being taken), "completed" (course over).
NOT_TAKING = frozenset({"stopped", "not-taken", "completed"})
_KIND_NAMES = {"request": "order", "administration": "dose given", "statement": "statement"}


def record_time(med: MedicationInput) -> datetime | None:
    """When a record last speaks about the drug: an order when authored, a dose when given, a statement at
    the end of its period (the stop) or else its start / assertion date."""
    if med.kind == "request":
        return med.authored
    return med.ended or med.authored


def stop_time(med: MedicationInput) -> datetime | None:
    """When a not-taking statement says the drug stopped: the end of its period, else its date."""
    return med.ended or med.authored


def reconcile(medications: Iterable[MedicationInput], ingredient_of: Callable[[MedicationInput], str | None],
              now: datetime) -> tuple[tuple[MedicationInput, ...], list[str]]:
    """The records with every ongoing record that a newer not-taking statement of the same drug contradicts
    ended at that statement's stop (status ``stopped``), and one sentence per contradiction."""
    meds = list(medications)
    ingredients = [None if med.is_draft else ingredient_of(med) for med in meds]  # each record classified once
    newest: dict[str, tuple[datetime, int]] = {}
    for index, med in enumerate(meds):
        if med.is_draft or med.do_not_perform or (
                (med.status or "").lower() in EXCLUDED_STATUSES[med.kind] and not _not_taking(med)):
            continue  # a draft is not taken yet; a prohibition or a record in error or never given says nothing
        ingredient = ingredients[index]
        moment = record_time(med)
        if ingredient is None or moment is None or moment > now + FUTURE_SKEW:
            continue
        # ties: the not-taking statement wins (the later word on the same record), then the id (any order in)
        best = newest.get(ingredient)
        if best is None or _rank(med, moment) > _rank(meds[best[1]], best[0]):
            newest[ingredient] = (moment, index)
    conflicts: list[str] = []
    for ingredient, (_, index) in sorted(newest.items()):
        statement = meds[index]
        stop = stop_time(statement)
        if not _not_taking(statement) or stop is None:
            continue
        for i, med in enumerate(meds):
            if i == index or ingredients[i] != ingredient:
                continue
            status = (med.status or "").lower()
            if status not in ONGOING_STATUSES[med.kind] or (med.ended is not None and med.ended <= stop):
                continue
            meds[i] = replace(med, status="stopped", ended=stop)
            conflicts.append(
                f"{ingredient}: {med.ref or 'a ' + _KIND_NAMES[med.kind]} says {status}"
                f"{' (from ' + when_text(med.authored) + ')' if med.authored else ''}, but the newer "
                f"{statement.ref or 'MedicationStatement'} says {statement.status} "
                + (f"on {when_text(stop)}: the newer record is used (taken as stopped then)" if statement.ended else
                   f"as of {when_text(stop)} (no stop date given): the newer record is used (taken as stopped by "
                   "then)"))
    return tuple(meds), sorted(conflicts)


def _rank(med: MedicationInput, moment: datetime) -> tuple[datetime, bool, str]:
    return moment, _not_taking(med), med.ref or ""


def _not_taking(med: MedicationInput) -> bool:
    return med.kind == "statement" and (med.status or "").lower() in NOT_TAKING
