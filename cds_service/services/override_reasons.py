"""The override reasons a card offers, read from ``services/data/override-reasons.tsv`` (data, with sources).

CDS Hooks 2.0 ``card.overrideReasons`` is a list of Codings (each with a ``display``, cds-resp-4), and the
clinician's choice comes back in feedback as ``overrideReason.reason``: one Coding. The 3.0 ballot keeps that
shape (``overrideReasons 0..* Coding``) and adds a code system of non-adherence reasons
(``http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes``). A Coding holds one code, so each
reason is offered once: as the 3.0 code where one fits it (``standard_code``), else as the project's own code
(system :data:`OVERRIDE_SYSTEM`). Feedback is accepted with either code; :func:`reason_code` maps both to the
project code (for the report).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from cds_service.protocol import models

OVERRIDE_SYSTEM = "https://github.com/nms-cds/nms-cds/override-reason"
DATA = Path(__file__).with_name("data") / "override-reasons.tsv"


@dataclass(frozen=True)
class Reason:
    code: str  # the project code
    display: str
    withdrawal_display: str  # the words on a card for dopaminergic withdrawal alone
    standard_system: str | None  # the CDS Hooks 3.0 ballot code that fits, if any
    standard_code: str | None
    source: str

    def coding(self, *, withdrawal_only: bool = False) -> models.OverrideReason:
        """The one Coding offered: the standard code where one fits, else the project's."""
        display = self.withdrawal_display if withdrawal_only else self.display
        if self.standard_system and self.standard_code:
            return models.OverrideReason(system=self.standard_system, code=self.standard_code, display=display)
        return models.OverrideReason(system=OVERRIDE_SYSTEM, code=self.code, display=display)


@cache
def reasons() -> tuple[Reason, ...]:
    with DATA.open(encoding="utf-8", newline="") as f:
        rows = csv.DictReader((line for line in f if not line.startswith("#")), delimiter="\t",
                              quoting=csv.QUOTE_NONE)
        return tuple(Reason(code=r["code"], display=r["display"],
                            withdrawal_display=r["withdrawal_display"] or r["display"],
                            standard_system=r["standard_system"] or None, standard_code=r["standard_code"] or None,
                            source=r["source"]) for r in rows)


def offered(*, withdrawal_only: bool) -> list[models.OverrideReason]:
    return [r.coding(withdrawal_only=withdrawal_only) for r in reasons()]


def reason_code(system: str | None, code: str | None) -> str | None:
    """The project code of a feedback's override reason given with either code; else the code as given."""
    if not code:
        return None
    for r in reasons():
        if code == r.code and system in (None, OVERRIDE_SYSTEM):
            return r.code
        if code == r.standard_code and system in (None, r.standard_system):
            return r.code
    return code


#: (code, display) pairs in the order offered, the project codes (kept for the report demo and tests).
OVERRIDE_REASONS = tuple((r.code, r.display) for r in reasons())
