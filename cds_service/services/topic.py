"""The card's ``source.topic`` (CDS Hooks 2.0/3.0 ``Source.topic``, a Coding): what the guidance is about.

The topic is the NMS concept itself, read from the knowledge tables (``[history] snomed_nms`` in
thresholds.toml, a code of the ``nms`` concept in conditions.tsv), not written here: SNOMED CT 15244003, so a CDS
client can group, filter or report cards by topic. System and code only: the card's text says what it is.
"""

from __future__ import annotations

from cds_service.clinical.valuesets import SNOMED, load
from cds_service.protocol import models


def nms_topic() -> models.Coding:
    vs = load()
    code = str(vs.thresholds["history"]["snomed_nms"])
    concept = vs.conditions.get((SNOMED, code))
    if concept is None or concept.concept != "nms":  # the two tables disagree: a packaging error, not a request's
        raise RuntimeError(f"[history] snomed_nms {code} is not an nms code of conditions.tsv")
    return models.Coding(system=SNOMED, code=code)
