"""Date bounds for the service's own FHIR queries, derived from the rules' windows.

CDS Hooks 2.0 prefetch templates cannot carry relative dates (no date tokens in 2.0), so the discovery
templates stay unbounded. When the service queries ``fhirServer`` itself (a key absent from prefetch, or one
that must be re-fetched), it knows ``now`` (the engine's clock) and asks only for what the rules can use:

- ``{param}=ge{now - look-back}`` on the resource type's R4 date search parameter;
- sorted newest first (``_sort=-{param}``), so that paging can stop once a page has gone past the oldest
  date needed, also against servers that ignore the date parameter (see :meth:`FhirClient.follow`);
- for readings before the window that a rule still needs, an extra query per key, run concurrently: the
  falling serum iron compares with the last iron before the lab window, however old (``_count=1``); the
  vital-sign baseline falls back to the earliest reading within ``fallback_days`` when its 24-168 h
  window is empty (the oldest readings of that range, one page, oldest first).

Against a server that ignores the date parameter the main queries are still right (paging stops by the
resources' own dates); the extra queries then return readings from elsewhere in the record, which are
dropped, so the iron comparison and the baseline fallback may miss their reading (the cards then show what
was seen; nothing is invented). The ``earliest`` page holds 200 readings: a record with more than 200 in the
fallback range where one concept has none among the first 200 would miss that concept's fallback.

The look-backs are computed from ``clinical/data/thresholds.toml`` (through :mod:`valuesets`); no number
lives here. One row per prefetch key (or per resource type, for keys without their own row): a key without
a row is not bounded. A new key gets a bound by adding a row to :data:`ROWS`.

R4 search parameters (https://hl7.org/fhir/R4/searchparameter-registry.html), per resource type:

- Observation ``date`` (``effective[x]``);
- MedicationAdministration ``effective-time`` (``effective[x]``); MedicationStatement ``effective``
  (``effective[x]``); a Period overlapping the bound matches, an open-ended one too;
- MedicationRequest: **no bound**. Its only date parameter is ``authoredon``, but the rules count an
  active order of any age, and an order that ended recently (validity period end, not searchable)
  whatever its authoring date; ``_lastUpdated`` does not change when a supply lapses;
- Condition, AllergyIntolerance (NMS history at any age), Patient (a read): **no bound**.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from itertools import pairwise
from typing import Any
from urllib.parse import quote, unquote

from cds_service.clinical.site import SiteKnowledge
from cds_service.clinical.valuesets import active, load


@dataclass(frozen=True, slots=True)
class Extra:
    """One more query for a key, for readings *before* its window that a rule still needs.

    ``previous``: the newest reading of ``concepts`` before the window (one resource, ``_count=1``);
    ``earliest``: the oldest readings of the key's own codes between ``window`` and the key's bound, oldest
    first, one page (``_count=200``): the baseline's fallback takes the earliest reading within its days.
    """

    kind: str  # "previous" or "earliest"
    concepts: tuple[str, ...] = ()  # previous: whose codes replace the key's code list
    window: str = ""  # earliest: how far back (a name in windows())


@dataclass(frozen=True, slots=True)
class Row:
    """How to bound one key: the date search parameter, the window name, what to ask for before it."""

    param: str  # R4 date search parameter of the resource type
    element: str  # the resource element behind ``param`` (``effective`` → effectiveDateTime/Period/Instant)
    window: str  # a name in :func:`windows`
    extras: tuple[Extra, ...] = ()


# key (or resource type) → row. Observation keys are listed one by one: each has its own window.
ROWS: dict[str, Row] = {
    "temperature": Row("date", "effective", "vitals"),
    "vitals": Row("date", "effective", "vitals", (Extra("earliest", window="vitals-fallback"),)),
    "labs": Row("date", "effective", "labs", (Extra("previous", concepts=("serum-iron",)),)),
    "MedicationAdministration": Row("effective-time", "effective", "exposure"),
    "MedicationStatement": Row("effective", "effective", "exposure"),
}
EARLIEST_COUNT = 200  # one page; HAPI's largest


def windows() -> dict[str, timedelta]:
    """:func:`_windows` of the knowledge in effect."""
    return _windows(active())


@lru_cache(maxsize=16)
def _windows(site: SiteKnowledge | None) -> dict[str, timedelta]:
    """How far back before ``now`` each family of rules looks (from ``thresholds.toml``).

    - ``vitals``: the acute window plus the baseline look-back before its earliest anchor (the window
      start): ``acute_hours`` + ``lookback_start_hours``;
    - ``vitals-fallback``: the acute window plus ``fallback_days``: when a baseline window is empty, the
      rules take the earliest reading within those days (the ``earliest`` extra query);
    - ``labs``: the lab window (the falling-iron comparison is the ``previous`` extra query);
    - ``exposure``: the exposure window, the long-acting-injectable interval, the withdrawal window and
      the recent-start window, whichever is longest.
    """
    th: dict[str, Any] = load(site).thresholds
    hours = timedelta(hours=1)
    days = timedelta(days=1)
    acute = th["window"]["acute_hours"] * hours
    ex = th["exposure"]
    return {
        "vitals": acute + th["baseline"]["lookback_start_hours"] * hours,
        "vitals-fallback": acute + th["baseline"]["fallback_days"] * days,
        "labs": th["window"]["lab_days"] * days,
        "exposure": max(ex["window_hours"] * hours, ex["depot_window_days"] * days,
                        ex["withdrawal_window_days"] * days, ex["recent_start_days"] * days),
    }


@dataclass(frozen=True, slots=True)
class ExtraQuery:
    url: str
    keep: Callable[[dict[str, Any]], bool]  # drops what a server that ignores the date parameter sent


@dataclass(frozen=True, slots=True)
class Plan:
    """The bounded query for one key and how to tell when paging may stop."""

    url: str
    oldest: datetime | None  # None: unbounded, page to the end (within the client's caps)
    time_of: Callable[[dict[str, Any]], datetime | None]
    extras: tuple[ExtraQuery, ...] = ()
    param: str = ""  # the date search parameter (slices bound it on both sides)

    def slice_url(self, low: datetime, high: datetime, *, last: bool, count: int) -> str:
        """The bounded query narrowed to ``[low, high)`` (``[low, high]`` for the newest slice, ``last``),
        newest first, ``count`` a page: one of the time slices of :func:`slices`."""
        path, query = self.url.split("?", 1)
        pairs = [part for part in query.split("&") if _name(part) not in (self.param, "_sort", "_count")]
        upper = f"{self.param}=le{fhir_instant(high)}" if last else f"{self.param}=lt{fhir_instant(high)}"
        return f"{path}?" + "&".join([*pairs, f"{self.param}=ge{fhir_instant(low)}", upper,
                                      f"_sort=-{self.param}", f"_count={count}"])


def _no_time(resource: dict[str, Any]) -> datetime | None:
    return None


def fhir_instant(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def row_for(key: str, url: str) -> Row | None:
    resource_type = url.split("?", 1)[0].strip("/").split("/")[0]
    return ROWS.get(key) or ROWS.get(resource_type)


def _between(time_of: Callable[[dict[str, Any]], datetime | None], low: datetime | None,
             high: datetime) -> Callable[[dict[str, Any]], bool]:
    def keep(resource: dict[str, Any]) -> bool:
        t = time_of(resource)
        return t is not None and t < high and (low is None or t >= low)

    return keep


def plan(key: str, url: str, now: datetime | None) -> Plan:
    """The query the service sends for ``key`` (``url``: the filled template) at ``now``."""
    row = row_for(key, url) if "?" in url else None
    if row is None or now is None:
        return Plan(url, None, _no_time)
    oldest = now - windows()[row.window]
    path, query = url.split("?", 1)
    # the filled template's own encoding is kept: only whole parameters are dropped or added
    pairs = [part for part in query.split("&") if part and _name(part) not in (row.param, "_sort")]
    since = fhir_instant(oldest)
    time_of = _time_reader(row.element)
    extras: list[ExtraQuery] = []
    for extra in row.extras:
        if extra.kind == "previous":
            codes = ",".join(load().query_codes(*extra.concepts))
            rest = [part for part in pairs if _name(part) not in ("code", "_count")]
            parts = [*rest, f"code={quote(codes, safe='|,:/')}", f"{row.param}=lt{since}",
                     f"_sort=-{row.param}", "_count=1"]
            extras.append(ExtraQuery(f"{path}?" + "&".join(parts), _between(time_of, None, oldest)))
        elif extra.kind == "earliest":
            far = now - windows()[extra.window]
            if far >= oldest:
                continue  # the fallback reaches no further than the window itself
            rest = [part for part in pairs if _name(part) != "_count"]
            parts = [*rest, f"{row.param}=ge{fhir_instant(far)}", f"{row.param}=lt{since}",
                     f"_sort={row.param}", f"_count={EARLIEST_COUNT}"]
            extras.append(ExtraQuery(f"{path}?" + "&".join(parts), _between(time_of, far, oldest)))
    bounded = "&".join([*pairs, f"{row.param}=ge{since}", f"_sort=-{row.param}"])
    return Plan(f"{path}?{bounded}", oldest, time_of, tuple(extras), row.param)


def _name(part: str) -> str:
    """The parameter name of one ``name[:modifier]=value`` query part (modifier dropped)."""
    return unquote(part.split("=", 1)[0]).split(":", 1)[0]


@cache
def _time_reader(element: str) -> Callable[[dict[str, Any]], datetime | None]:
    """Latest instant a resource's ``element[x]`` covers (a Period's end, else its start), or None."""
    names = (element + "DateTime", element + "Instant")
    period = element + "Period"

    def time_of(resource: dict[str, Any]) -> datetime | None:
        for name in names:
            value = resource.get(name)
            if isinstance(value, str):
                return parse_latest(value)
        value = resource.get(period)
        if isinstance(value, dict):
            end, start = value.get("end"), value.get("start")
            if isinstance(end, str):
                return parse_latest(end)
            if isinstance(start, str):
                # open-ended: it reaches into the present; never "older than the bound"
                return datetime.max.replace(tzinfo=UTC)
        return None

    return time_of


def parse_latest(text: str) -> datetime | None:
    """The latest instant a FHIR date/dateTime/instant covers (``2026-11`` → the end of November), UTC."""
    try:
        if len(text) == 4 and text.isdigit():
            return datetime(int(text) + 1, 1, 1, tzinfo=UTC) - timedelta(microseconds=1)
        if len(text) == 7:
            year, month = int(text[:4]), int(text[5:7])
            first = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
            return first - timedelta(microseconds=1)
        if len(text) == 10:
            return datetime.fromisoformat(text).replace(tzinfo=UTC) + timedelta(days=1, microseconds=-1)
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def passed(resources: list[dict[str, Any]], oldest: datetime,
           time_of: Callable[[dict[str, Any]], datetime | None]) -> bool:
    """True when this page, sorted newest first, has gone past ``oldest``: later pages hold nothing needed.

    Only a page that is in newest-first order (a server that honoured ``_sort``) allows the conclusion.
    """
    times = [t for t in map(time_of, resources) if t is not None]
    if not times or times[-1] >= oldest:
        return False
    return all(a >= b for a, b in pairwise(times))


# --- time slices: the rest of a dense window, fetched concurrently ------------------------------------

SLICE_COUNT = 200  # resources asked for per slice page (HAPI's largest page)
SLICE_MARGIN = 1.25  # slices are sized for this many times the resources the density estimate expects


@dataclass(frozen=True, slots=True)
class Slice:
    """One part of a key's window and its query: a time slice ``[low, high)`` (``[low, high]`` for the
    newest), or a page of the server's own result set at an offset (``size`` resources, no times)."""

    url: str
    low: datetime | None = None
    high: datetime | None = None
    size: int = 0


def slices(plan: Plan, page: list[dict[str, Any]], total: Any, max_slices: int) -> tuple[list[Slice], datetime | None]:
    """Split what a first page (newest first) left of ``plan``'s window into time slices, newest first, each
    sized to fill about one page of :data:`SLICE_COUNT` at the density the page (or the Bundle's ``total``)
    shows; at most ``max_slices``. Returns the slices and, when the slices cannot reach back to the window's
    start within ``max_slices``, the oldest instant they cover (older readings stay unread).

    No slices (``[]``, None) unless the page proves that the server honours the date bound and the sort: every
    time on it within the window and in newest-first order. The newest slice ends at the page's oldest time,
    inclusive (readings sharing that instant may straddle the page boundary; duplicates are merged by id).
    """
    if plan.oldest is None or not plan.param:
        return [], None
    times = [plan.time_of(r) for r in page]
    if not times or any(t is None for t in times):
        return [], None
    known = [t for t in times if t is not None]
    if any(t < plan.oldest for t in known) or any(a < b for a, b in pairwise(known)):
        return [], None
    newest, last = known[0], known[-1]
    remaining = last - plan.oldest
    if remaining <= timedelta(0):
        return [], None
    if isinstance(total, int) and not isinstance(total, bool) and total > len(page):
        expected = float(total - len(page))
    else:  # the page's own density, over the span it covers (at least a minute)
        expected = len(page) * remaining / max(newest - last, timedelta(minutes=1))
    wanted = max(1, int(expected * SLICE_MARGIN / SLICE_COUNT) + 1)
    width = remaining / wanted
    count = min(wanted, max_slices)
    bounds = [last - width * i for i in range(count + 1)]
    bounds = [b.replace(microsecond=0) for b in bounds]  # the instants the URLs carry (seconds)
    if count == wanted:
        bounds[-1] = plan.oldest.replace(microsecond=0)
    out = [Slice(plan.slice_url(low, high, last=i == 0, count=SLICE_COUNT), low, high)
           for i, (high, low) in enumerate(pairwise(bounds))]
    return out, (None if count == wanted else bounds[-1])
