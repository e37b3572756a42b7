"""The common ground of FHIR extraction: the :class:`Extracted` records and counts, and the readers every
resource kind shares (dates, numbers, codings, the lenient parse that counts what it cannot read).

The resource kinds have their own modules: :mod:`.observations`, :mod:`.medications`, :mod:`.history`; one
resource per type and id is :mod:`.versions`; the plain-JSON fast path is :mod:`.plain_json`. Raw JSON is
filtered by resource type and code *before* anything else, so a long record costs time in proportion to the
relevant resources, not to its size. Parsing is lenient (:func:`cds_service.fhir.models.parse`); what cannot
be read is counted, never fatal.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from cds_service.clinical.model import Coding, HistoryInput, MedicationInput, ObservationInput
from cds_service.clinical.valuesets import load
from cds_service.fhir.models import REASONS, ParseResult


@dataclass
class Extracted:
    medications: list[MedicationInput] = field(default_factory=list)
    observations: list[ObservationInput] = field(default_factory=list)
    history: list[HistoryInput] = field(default_factory=list)
    sex: str | None = None
    unreadable: int = 0  # resources dropped because they could not be parsed
    repairs: int = 0
    # what could not be read, by (kind, reason): kind is one of UNREAD_KINDS, reason one of models.REASONS
    unread: Counter[tuple[str, str]] = field(default_factory=Counter)
    # older versions (or differing repeats) of a resource listed more than once under one type and id: not used
    duplicates: int = 0
    # (resource type, id) -> the raw resource used (a reference into the request's data): one per type and id
    seen: dict[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)

    def unread_items(self) -> tuple[tuple[str, str, int], ...]:
        """(kind, reason, count) of what could not be read, in a stable order."""
        return tuple((kind, reason, n) for (kind, reason), n in sorted(self.unread.items()))

    def unread_labels(self) -> Counter[tuple[str, str]]:
        """The unreadable counts as bounded metrics labels: a kind outside UNREAD_KINDS or a reason outside
        models.REASONS is counted as "other"."""
        labels: Counter[tuple[str, str]] = Counter()
        for (kind, reason), n in self.unread.items():
            labels[(kind if kind in UNREAD_KINDS else "other", reason if reason in REASONS else "other")] += n
        return labels


# The kinds of resource counted when unreadable (bounded: they are metrics labels, and the card words them).
UNREAD_KINDS = ("temperature", "heart-rate", "respiratory-rate", "blood-pressure", "ck", "lab", "culture",
                "observation", "medication", "draft-order", "condition", "allergy")


def when(value: Any) -> datetime | None:
    """A FHIR date/dateTime/instant as an aware UTC datetime; partial dates (YYYY-MM) give None."""
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return None


def number_of(value: Any) -> float | None:
    if isinstance(value, Decimal | int | float) and not isinstance(value, bool):
        number = float(value)
        return number if number == number and abs(number) != float("inf") else None
    return None


def codings_of(concept: Any) -> tuple[Coding, ...]:
    if concept is None:
        return ()
    return tuple(Coding(c.system, c.code, c.display) for c in (concept.coding or []))


def texts_of(concept: Any) -> list[str]:
    if concept is None:
        return []
    out = [concept.text] if concept.text else []
    out.extend(c.display for c in (concept.coding or []) if c.display)
    return out



def read_model(result: ParseResult, out: Extracted, kind: str) -> Any:
    """The parsed model, counting repairs; None (counted as unreadable, by ``kind`` and reason) when the
    resource could not be read."""
    out.repairs += bool(result.repairs)
    if result.model is None:
        out.unreadable += 1
        out.unread[(kind, result.reason or "invalid structure")] += 1
    return result.model



def site_keys(text: object, codings: Iterable[tuple[object, object, object]]) -> tuple[str, ...]:
    """The keys of the site's local code maps (cds_service/clinical/site.py) that a CodeableConcept matches:
    ``(system, code, display)`` of each coding, and the concept's text; a map with a text matches only where the
    text or a display equals it, ignoring case and surrounding space. () without a site file."""
    site_codes = load().site_codes
    if not site_codes:
        return ()
    keys: list[str] = []
    listed = [c for c in codings if isinstance(c[0], str) and isinstance(c[1], str)]
    for system, code, _ in listed:
        for entry in site_codes.get((str(system), str(code)), ()):
            if entry.text is not None:
                texts = {t.strip().casefold() for t in (text, *(c[2] for c in listed)) if isinstance(t, str)}
                if entry.text.strip().casefold() not in texts:
                    continue
            keys.append(entry.key)
    return tuple(keys)


def json_site_keys(concept: Any) -> tuple[str, ...]:
    """:func:`site_keys` of a CodeableConcept as JSON."""
    if type(concept) is not dict or not load().site_codes:
        return ()
    codings = concept.get("coding")
    return site_keys(concept.get("text"), [(c.get("system"), c.get("code"), c.get("display"))
                                           for c in (codings if type(codings) is list else ()) if type(c) is dict])
