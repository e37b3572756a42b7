"""The FHIR datatype checks of the plain-JSON fast path (:mod:`cds_service.fhir.plain_json`): primitives with
fhir_core's own patterns, and the complex types (Coding, CodeableConcept, Reference, Meta, Quantity, Range,
Period, Timing, Dosage) as the elements the fast path accepts. A check says True only for a value the R4B
model would read to the same thing; anything else sends the resource to the R4B path.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

from fhir_core.types import DateTime as _FhirDateTime
from fhir_core.types import Decimal as _FhirDecimal
from fhir_core.types import Instant as _FhirInstant

from cds_service.fhir.models import tidy_code

_ID = re.compile(r"[A-Za-z0-9\-.]{1,255}")  # fhir_core Id: ^[A-Za-z0-9\-.]+$, TYPES_ID_MAX_LENGTH 255
_CODE = re.compile(r"[!-~]+(?: [!-~]+)*")  # printable ASCII inside fhir_core Code: ^[^\s]+(\s[^\s]+)*$
_URI = re.compile(r"[!-~]+")  # non-empty printable ASCII inside fhir_core Uri/Canonical (\S*)
_PLAIN_DATETIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-5][0-9](?:\.[0-9]{1,6})?"
                             r"(?:Z|[+-][0-9]{2}:[0-9]{2})")  # full date-time, no leap second, <= 6 digits
_PLAIN_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_EXACT_FLOAT = 2**53
_INT32 = 2**31 - 1


class Memo:
    """Per-call memory: element values already found valid, and date-times already read."""

    __slots__ = ("concepts", "contexts", "kept_concepts", "times", "values")

    def __init__(self) -> None:
        self.values: dict[str, list[Any]] = {}
        self.contexts: list[tuple[Any, ...]] = []  # (meta, category, subject, ...) tuples found valid
        self.times: dict[str, datetime | None] = {}
        # Observation.code values found valid and their LOINC codes, by (text, first code): one comparison
        # finds a repeated concept instead of one per concept seen (a record has a dozen or more)
        self.concepts: dict[tuple[Any, Any], list[tuple[Any, tuple[str, ...]]]] = {}
        self.kept_concepts = 0  # how many are remembered (at most 64)


def _ok_string(value: Any) -> bool:
    # fhir_core String: pattern [ \r\n\t\S]+ (a search), so any str with one non-whitespace character
    return type(value) is str and value != "" and not value.isspace()


def ok_code(value: Any) -> bool:
    return type(value) is str and _CODE.fullmatch(value) is not None


def _ok_uri(value: Any) -> bool:
    return type(value) is str and _URI.fullmatch(value) is not None


def ok_id(value: Any) -> bool:
    return type(value) is str and _ID.fullmatch(value) is not None


def _ok_decimal(value: Any) -> bool:
    if type(value) is float:
        return value - value == 0.0 and _FhirDecimal.pattern.fullmatch(str(value)) is not None  # finite
    return type(value) is int and -_EXACT_FLOAT <= value <= _EXACT_FLOAT


def _ok_positive_int(value: Any) -> bool:
    return type(value) is int and 1 <= value <= _INT32


def _ok_integer(value: Any) -> bool:
    return type(value) is int and -_INT32 - 1 <= value <= _INT32


def ok_boolean(value: Any) -> bool:
    return type(value) is bool


def plain_instant(value: Any) -> datetime | None:
    """A FHIR instant (full date-time with zone) as an aware UTC datetime; None if not plainly valid."""
    if type(value) is not str or _PLAIN_DATETIME.fullmatch(value) is None or (
            _FhirInstant.pattern.fullmatch(value) is None):
        return None
    try:
        return datetime.fromisoformat(value).astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def plain_datetime(value: Any) -> datetime | None:
    """A FHIR dateTime that is a full date-time with zone, or a full date (read as midnight UTC, like
    :func:`when` reads the model's ``date``); None for partial dates and anything not plainly valid."""
    if type(value) is not str:
        return None
    if len(value) == 10:
        if _PLAIN_DATE.fullmatch(value) is None or _FhirDateTime.pattern.fullmatch(value) is None:
            return None
        try:
            day = date.fromisoformat(value)
        except ValueError:
            return None
        return datetime(day.year, day.month, day.day, tzinfo=UTC)
    if _PLAIN_DATETIME.fullmatch(value) is None or _FhirDateTime.pattern.fullmatch(value) is None:
        return None
    try:
        return datetime.fromisoformat(value).astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def tidied_code(value: Any) -> str | None:
    """A code that is plain once stray whitespace around it is removed (``"Final "``), as the R4B path's
    :func:`~cds_service.fhir.models.tidy` reads it; None for anything else (it is not plain)."""
    if type(value) is not str or value.strip() == value:
        return None
    tidied = tidy_code(value)
    return tidied if ok_code(tidied) and tidied == value.strip() else None


def ok_datetime(value: Any) -> bool:
    return plain_datetime(value) is not None


def _ok_instant(value: Any) -> bool:
    return plain_instant(value) is not None


Check = Callable[[Any], bool]


def _element(checks: dict[str, Check], required: tuple[str, ...] = ()) -> Check:
    keys = frozenset(checks)

    def check(value: Any) -> bool:
        if type(value) is not dict or not value or not value.keys() <= keys:
            return False
        for name in required:
            if name not in value:
                return False
        for name, item in value.items():  # noqa: SIM110 - a plain loop: this is the hot path
            if not checks[name](item):
                return False
        return True

    return check


def list_of(check: Check) -> Check:
    def check_list(value: Any) -> bool:
        return type(value) is list and bool(value) and all(map(check, value))

    return check_list


# Only str leaves below Coding/CodeableConcept/Reference/Meta (no userSelected boolean), so that a value
# equal (==) to one already checked is the same JSON and may skip the check (see _memo_ok).
_ok_coding = _element({"system": _ok_uri, "version": _ok_string, "code": ok_code, "display": _ok_string})
ok_concept = _element({"coding": list_of(_ok_coding), "text": _ok_string})
ok_concepts = list_of(ok_concept)
ok_reference = _element({"reference": _ok_string, "type": _ok_uri, "display": _ok_string})
ok_meta = _element({"versionId": ok_id, "lastUpdated": _ok_instant, "source": _ok_uri,
                     "profile": list_of(_ok_uri), "tag": list_of(_ok_coding), "security": list_of(_ok_coding)})
_QUANTITY_KEYS = frozenset({"value", "unit", "system", "code"})


_UNITS_SEEN: set[tuple[str, str, str]] = set()  # (unit, system, code) triples found valid: a pure, bounded cache


def ok_quantity(value: Any) -> bool:
    if type(value) is not dict or not value or not value.keys() <= _QUANTITY_KEYS:
        return False
    if not _ok_decimal(value.get("value", 0)):
        return False
    unit, system, code = value.get("unit", "-"), value.get("system", "-"), value.get("code", "-")
    if type(unit) is not str or type(system) is not str or type(code) is not str:
        return False
    triple = (unit, system, code)
    if triple in _UNITS_SEEN:
        return True
    if not (_ok_string(unit) and _ok_uri(system) and ok_code(code)):
        return False
    if len(_UNITS_SEEN) < 4096:
        _UNITS_SEEN.add(triple)
    return True


def _ok_range_numbers(value: dict[str, Any]) -> bool:
    """The decimals of a reference range already known equal (==) to a valid one: still of a valid type?"""
    for side in ("low", "high"):
        quantity = value.get(side)
        if quantity is not None and "value" in quantity and not _ok_decimal(quantity["value"]):
            return False
    return True


_ok_range = _element({"low": ok_quantity, "high": ok_quantity, "type": ok_concept, "appliesTo": ok_concepts,
                      "text": _ok_string})
ok_ranges = list_of(_ok_range)
_ok_period = _element({"start": ok_datetime, "end": ok_datetime})
_ok_repeat = _element({"boundsPeriod": _ok_period, "frequency": _ok_positive_int, "frequencyMax": _ok_positive_int,
                       "period": _ok_decimal, "periodMax": _ok_decimal, "periodUnit": ok_code})
_ok_timing = _element({"repeat": _ok_repeat, "code": ok_concept})
_ok_dose_and_rate = _element({"type": ok_concept, "doseQuantity": ok_quantity})
ok_dosage = _element({"sequence": _ok_integer, "text": _ok_string, "additionalInstruction": ok_concepts,
                       "patientInstruction": _ok_string, "timing": _ok_timing, "asNeededBoolean": ok_boolean,
                       "site": ok_concept, "route": ok_concept, "method": ok_concept,
                       "doseAndRate": list_of(_ok_dose_and_rate)})
ok_dispense = _element({"validityPeriod": _ok_period, "quantity": ok_quantity})


def _memo_ok(name: str, value: Any, check: Check, memo: Memo) -> bool:
    """``check(value)``, remembering str-only values found valid in this call (equal means identical)."""
    known = memo.values.get(name)
    if known is not None and value in known:
        return True
    if not check(value):
        return False
    if known is None:
        memo.values[name] = [value]
    elif len(known) < 16:
        known.append(value)
    return True


def memo_datetime(value: Any, memo: Memo) -> datetime | None:
    if type(value) is not str:
        return None
    try:
        return memo.times[value]
    except KeyError:
        parsed = memo.times[value] = plain_datetime(value)
        return parsed


def memo_ranges(value: Any, memo: Memo) -> bool:
    known = memo.values.get("referenceRange")
    if known is not None and value in known:
        return all(map(_ok_range_numbers, value))
    if not ok_ranges(value):
        return False
    if known is None:
        memo.values["referenceRange"] = [value]
    elif len(known) < 16:
        known.append(value)
    return True
