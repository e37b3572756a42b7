"""Turn an :class:`~cds_service.clinical.Assessment` into CDS Hooks 2.0 cards.

Pure presentation: the wording says "possible NMS", shows each criterion with value, unit, time and
points, names what the record cannot show, and never claims a diagnosis or data that were not seen.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from cds_service import __version__
from cds_service.clinical.model import Assessment
from cds_service.clinical.valuesets import LOINC, load
from cds_service.protocol import models
from cds_service.services.card_detail import detail as _detail
from cds_service.services.card_summary import SUMMARY_LIMIT, summary, withdrawal_only
from cds_service.services.card_time import CardStyle
from cds_service.services.markup import plain

# OVERRIDE_REASONS and OVERRIDE_SYSTEM are re-exported: they were defined here before the reasons became data
from cds_service.services.override_reasons import OVERRIDE_REASONS as OVERRIDE_REASONS
from cds_service.services.override_reasons import OVERRIDE_SYSTEM as OVERRIDE_SYSTEM
from cds_service.services.override_reasons import offered
from cds_service.services.topic import nms_topic

CARD_NAMESPACE = uuid.UUID("6f1c1e52-3c1b-4a8e-9a55-2f0c7f4b9d10")
IEC_URL = "https://pubmed.ncbi.nlm.nih.gov/21733489/"
SEED_URL = "https://doi.org/10.1503/cmaj.091442"
SOURCE_LABEL = "nms-cds: NMS pattern check (IEC consensus criteria)"
TREND_LABEL = "Trend view (temperature, CK, exposures)"
__all__ = ["SUMMARY_LIMIT", "build_card", "build_cards", "card_uuid", "detail", "summary"]

_LAB_LABELS = {"2157-6": "CK", "2498-4": "serum iron", "6690-2": "WBC", "2160-0": "creatinine",
               "2823-3": "potassium", "14798-3": "serum iron", "1988-5": "CRP"}


def card_uuid(hook_instance: str, kind: str) -> str:
    """Stable per hook invocation and card kind, so feedback can be tied back to the card."""
    return str(uuid.uuid5(CARD_NAMESPACE, f"{hook_instance}:{kind}"))


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


_SOURCE = models.Source(label=SOURCE_LABEL, url=IEC_URL, topic=nms_topic())  # topic: CDS Hooks 3.0 readiness


def _source() -> models.Source:
    """The card's source, its label naming the knowledge version the card was built with (package version and
    site file: cds_service/knowledge)."""
    version = load().knowledge_version or f"{__version__}+default"
    return _SOURCE.model_copy(update={"label": f"{SOURCE_LABEL}; knowledge {version}"})
_LINKS = (
    models.Link(label="IEC consensus criteria for NMS (Gurrera 2011)", url=IEC_URL, type="absolute"),
    models.Link(label="NMS: a neuroimmunologic hypothesis (Anglin 2010, serum iron)", url=SEED_URL, type="absolute"),
)

# The override reasons offered (data: services/data/override-reasons.tsv): the usual ones, and those of a card
# for dopaminergic withdrawal alone.
_OVERRIDES = {withdrawal_only: tuple(offered(withdrawal_only=withdrawal_only)) for withdrawal_only in (False, True)}


def detail(a: Assessment, style: CardStyle | None = None) -> str:
    """The card's markdown detail, times in ``style``'s zone (UTC without one)."""
    return _detail(a, (style or CardStyle()).zone)


def links(a: Assessment, style: CardStyle) -> list[models.Link]:
    """The references, and for a warning or critical card the trend view (a SMART app the EHR launches)."""
    out = list(_LINKS)
    if style.trend_url and a.indicator in ("critical", "warning"):
        out.append(models.Link(label=TREND_LABEL, url=style.trend_url, type="smart"))
    return out


def build_card(a: Assessment, hook_instance: str, patient_id: str,
               extra_suggestions: Sequence[models.Suggestion] = (),
               style: CardStyle | None = None) -> models.Card | None:
    """The card for ``a`` (``None``: no finding, no card). ``hook_instance`` seeds the card and suggestion uuids
    (a hook policy may pass a stable evidence key instead); ``extra_suggestions`` are a hook policy's own,
    appended after these; ``style``: the zone of the card's times and the trend view's URL."""
    if a.indicator is None:
        return None
    style = style or CardStyle()
    override: list[models.OverrideReason] | None = None
    if a.indicator != "info":
        override = list(_OVERRIDES[withdrawal_only(a)])
    suggested = suggestions(a, hook_instance, patient_id) + list(extra_suggestions)
    return models.Card(
        uuid=card_uuid(hook_instance, f"nms:{a.indicator}"),
        summary=summary(a),
        indicator=a.indicator,
        detail=detail(a, style),
        source=_source(),
        links=links(a, style),
        overrideReasons=override,
        suggestions=suggested or None,
        selectionBehavior="any" if suggested else None,
    )


def build_cards(a: Assessment, hook_instance: str, patient_id: str,
                extra_suggestions: Sequence[models.Suggestion] = (),
                style: CardStyle | None = None) -> list[dict[str, Any]]:
    """The cards for ``a`` as JSON: none, or the one of :func:`build_card` (absent members left out)."""
    card = build_card(a, hook_instance, patient_id, extra_suggestions, style)
    return [] if card is None else [card.model_dump(exclude_none=True)]
