"""Resolve each prefetch key the way CDS Hooks 2.0 defines it, falling back to the FHIR server.

Per key (``cds-hooks.md`` section 4):

- a resource or Bundle → use it; a Bundle's ``next`` links are followed through the FHIR server;
- ``null`` or an empty Bundle → no data (a successful, empty answer);
- an OperationOutcome → a failed prefetch: not trusted as data, re-fetched at most once from ``fhirServer``;
- key absent → query ``fhirServer`` with the template (bearer token when given, anonymous otherwise).

The service's own queries (absent or re-fetched keys) carry date bounds from the rules' windows when
``now`` is given, sorted newest first, and stop paging past the oldest date needed
(:mod:`cds_service.fhir.bounds`); prefetched values are used exactly as they came.

A dense window is not paged one ``next`` link after another. When a key's first page (newest first) shows
that more of the window is left, the rest is fetched concurrently, newest first, so that the readings the
verdict depends on most (the acute window) come first and a server's per-page latency is paid about once
instead of once per page:

- when the ``next`` link pages the server's own result set by offset (HAPI ``_getpages`` /
  ``_getpagesoffset``, ``_offset``) and the Bundle has a ``total``, every later page's link is known at once:
  those pages (cheap for the server: the result set is kept) are read in parallel;
- otherwise, when the page proves that the server honours the date bound and the sort, the rest of the window
  is split into time slices (:func:`bounds.slices`), each a query of about a page;
- otherwise the ``next`` links are followed one after another, as before.

All pages of a key (first page, later pages or slices and their ``next`` pages) stay within
``fhir_max_pages``, every request carries the bearer token and a timeout. What could not be read in time or
within the cap is named on the card (the key is "only partly" read, saying which readings).

Independent server queries run concurrently under the hook's shared deadline. The outcome of every key
is recorded (source, completeness, a safe note) so that cards can say exactly what was and was not seen.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from cds_service.errors import FhirError
from cds_service.fhir import bounds
from cds_service.fhir.client import FhirClient, PageStop, QueryPool, SearchResult

_TOKEN = re.compile(r"\{\{\s*([A-Za-z0-9_.]+)\s*\}\}")
_USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}
ABSENT = object()


@dataclass(slots=True)
class KeyData:
    key: str
    resources: list[dict[str, Any]] = field(default_factory=list)
    source: str = "none"  # "prefetch", "fhir-server", "prefetch+fhir-server", "none"
    ok: bool = True
    complete: bool = True
    note: str | None = None
    # the rest of a dense window, still to fetch (resolve() submits them): see bounds.slices
    slices: list[bounds.Slice] = field(default_factory=list)
    budget: _PageBudget | None = None
    gap: str | None = None  # what of the window the parts cannot reach (page cap), in words


class _PageBudget:
    """Pages a key may still read (``fhir_max_pages`` in all: first page, slices, their next pages)."""

    def __init__(self, pages: int) -> None:
        self._left = pages
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self._left <= 0:
                return False
            self._left -= 1
            return True


def substitute(template: str, context: Mapping[str, Any]) -> str | None:
    """Fill 2.0 prefetch tokens from the hook context; None when a token cannot be resolved."""
    missing = False

    def repl(match: re.Match[str]) -> str:
        nonlocal missing
        name = match.group(1)
        value: Any = None
        if name.startswith("context."):
            value = context.get(name.removeprefix("context."))
        elif name in _USER_TOKENS:
            user = context.get("userId")
            if isinstance(user, str) and user.startswith(_USER_TOKENS[name] + "/"):
                value = user.split("/", 1)[1]
        if not isinstance(value, str | int) or isinstance(value, bool) or value == "":
            missing = True
            return ""
        return quote(str(value), safe="")

    filled = _TOKEN.sub(repl, template)
    return None if missing else filled


def _is_read(template: str) -> bool:
    return "?" not in template


def _from_bundle(key: str, bundle: dict[str, Any], client: FhirClient | None) -> KeyData:
    if client is None:
        result = SearchResult()
        entries, links = bundle.get("entry"), bundle.get("link")
        keep = result.resources.append
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict):
                continue
            resource = entry.get("resource")
            if not isinstance(resource, dict):
                continue
            search = entry.get("search")
            if not (isinstance(search, dict) and search.get("mode") == "outcome"):
                keep(resource)
        links = links if isinstance(links, list) else []
        has_next = any(isinstance(link, dict) and link.get("relation") == "next" for link in links)
        if has_next:
            return KeyData(key, result.resources, "prefetch", True, False, "next page not followed: no fhirServer")
        return KeyData(key, result.resources, "prefetch")
    result = client.follow(bundle)
    source = "prefetch+fhir-server" if result.pages > 1 else "prefetch"
    return KeyData(key, result.resources, source, True, result.complete, result.note)


def _fetch(key: str, template_url: str, client: FhirClient, *, why: str | None,
           plan: bounds.Plan | None = None, sliced: bool = False) -> KeyData:
    """Query the server for one key; ``why`` says what was wrong with the prefetch value (None: absent).

    ``plan``: the date-bounded form of a search (:func:`bounds.plan`); without it the template as is.
    ``sliced``: read only the first page of a bounded search and leave the rest of the window as time slices
    in :attr:`KeyData.slices` (for :func:`resolve` to fetch concurrently); otherwise page to the end.
    """
    try:
        if _is_read(template_url):
            resource = client.read(template_url)
            data = KeyData(key, [resource], "fhir-server")
        elif plan is not None and plan.oldest is not None:
            stop = PageStop(plan.oldest, partial(bounds.passed, oldest=plan.oldest, time_of=plan.time_of))
            first = _first_page(key, plan, stop, client) if sliced else None
            if first is None:
                result = client.search(plan.url, stop=stop)
                first = KeyData(key, result.resources, "fhir-server", True, result.complete, result.note)
            data = first
        else:
            result = client.search(template_url)
            data = KeyData(key, result.resources, "fhir-server", True, result.complete, result.note)
    except FhirError as exc:
        prefix = f"{why}; re-fetch failed: " if why else ""
        return KeyData(key, [], "none", False, False, prefix + exc.message)
    if why:
        data.note = f"{why}; re-fetched from the FHIR server"
    return data


def _first_page(key: str, plan: bounds.Plan, stop: PageStop, client: FhirClient) -> KeyData:
    """The first page of a bounded search, with the rest of its window as parts to fetch concurrently (later
    pages by offset, or time slices); when neither applies, the search paged as usual from this page on."""
    first_url = client.url_for(plan.url)
    page = client.get_json(first_url)
    on_page = client.follow({**page, "link": []}).resources  # this page's resources, checked as a Bundle
    next_url = _next(page)
    if next_url is None or stop.passed(on_page):
        return KeyData(key, on_page, "fhir-server")
    pages = client.settings.fhir_max_pages - 1
    # a next link back to this page, or off the base: the usual paging, which says why it stops
    if unquote(next_url) == unquote(first_url) or not client.within_base(next_url) or pages < 1:
        result = client.follow(page, first_url=first_url, stop=stop)
        return KeyData(key, result.resources, "fhir-server", True, result.complete, result.note)
    parts, unreached = _offset_pages(page, next_url, len(on_page), pages)
    if parts:
        return KeyData(key, on_page, "fhir-server", slices=parts, budget=_PageBudget(pages), gap=unreached)
    time_slices, oldest_read = bounds.slices(plan, on_page, page.get("total"), pages)
    if time_slices:
        parts = [bounds.Slice(client.url_for(p.url), p.low, p.high) for p in time_slices]
        gap = f"readings before {_when(oldest_read)} not read: page cap (fhir_max_pages)" if oldest_read else None
        return KeyData(key, on_page, "fhir-server", slices=parts, budget=_PageBudget(pages), gap=gap)
    result = client.follow(page, first_url=first_url, stop=stop)
    return KeyData(key, result.resources, "fhir-server", True, result.complete, result.note)


_OFFSET_PARAMS = ("_getpagesoffset", "_offset")  # HAPI FHIR's kept result sets; offset paging (Medplum)


def _next(page: dict[str, Any]) -> str | None:
    links: list[Any] = page["link"] if isinstance(page.get("link"), list) else []
    return next((link["url"] for link in links if isinstance(link, dict) and link.get("relation") == "next"
                 and isinstance(link.get("url"), str)), None)


def _offset_pages(page: dict[str, Any], next_url: str, read: int, budget: int
                  ) -> tuple[list[bounds.Slice], str | None]:
    """Every later page of an offset-paged result set, newest first, from its ``next`` link and ``total``
    (at most ``budget`` pages); and a note when the pages allowed do not reach the end. ``([], None)`` when
    the link is not offset paging or the Bundle has no usable ``total``."""
    total = page.get("total")
    if not isinstance(total, int) or isinstance(total, bool) or total <= read:
        return [], None
    parts = urlsplit(next_url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    names = [name for name, _ in query]
    param = next((name for name in _OFFSET_PARAMS if names.count(name) == 1), None)
    counts = [value for name, value in query if name == "_count"]
    if param is None:
        return [], None
    try:
        start = int(dict(query)[param])
        size = int(counts[0]) if len(counts) == 1 else read
    except ValueError:
        return [], None
    if start != read or size <= 0:
        return [], None  # not the offset this page ends at: not a plain offset paging
    offsets = list(range(start, total, size))
    out = [bounds.Slice(urlunsplit(parts._replace(query=urlencode([(n, str(o) if n == param else v)
                                                                    for n, v in query]))), size=min(size, total - o))
           for o in offsets[:budget]]
    left = sum(min(size, total - o) for o in offsets[budget:])
    note = f"the oldest {left:,} of {total:,} readings not read: page cap (fhir_max_pages)" if left else None
    return out, note


def _fetch_slice(part: bounds.Slice, client: FhirClient, budget: _PageBudget
                 ) -> tuple[list[dict[str, Any]], str | None]:
    """One part of a window: its page and, for a time slice, while the key's page budget lasts, its next pages
    (FhirError propagates). Returns the resources and why the part was not read to its end (None: it was)."""
    if not budget.take():
        return [], "page cap (fhir_max_pages) reached"
    page = client.get_json(part.url)
    found: list[dict[str, Any]] = []
    seen: set[str] = {part.url}
    while True:
        found.extend(client.follow({**page, "link": []}).resources)
        next_url = _next(page) if part.low is not None else None  # an offset page ends where the next begins
        if next_url is None:
            return found, None
        if next_url in seen:
            return found, "next link loops back to a page already read"
        if not client.within_base(next_url):
            return found, "next link points outside the fhirServer base; not followed"
        if not budget.take():
            return found, "page cap (fhir_max_pages) reached"
        seen.add(next_url)
        page = client.get_json(next_url)


def _when(instant: datetime) -> str:
    return instant.strftime("%Y-%m-%d %H:%M UTC")


def _merge_slices(data: KeyData, futures: list[tuple[bounds.Slice, Future[tuple[list[dict[str, Any]], str | None]]]],
                  budget: Callable[[], float]) -> KeyData:
    """Add the parts' resources to the key (once per type and id); name what of the window was not read."""
    seen = {(r.get("resourceType"), r.get("id")) for r in data.resources if r.get("id")}
    unread: list[bounds.Slice] = []
    reasons: list[str] = []
    for part, future in futures:
        try:
            found, short = future.result(timeout=max(budget(), 0.0) + 0.05)
        except (FhirError, FutureTimeout) as exc:
            future.cancel()
            unread.append(part)
            reasons.append(exc.message if isinstance(exc, FhirError) else "hook time budget exhausted")
            continue
        if short is not None:
            unread.append(part)
            reasons.append(short)
        for resource in found:
            ident = (resource.get("resourceType"), resource.get("id"))
            if resource.get("id") and ident in seen:
                continue
            seen.add(ident)
            data.resources.append(resource)
    notes = [data.gap] if data.gap else []
    if unread:
        timed = [p for p in unread if p.low is not None and p.high is not None]
        if timed:
            low = min(p.low for p in timed if p.low is not None)
            high = max(p.high for p in timed if p.high is not None)
            notes.insert(0, f"readings from {_when(low)} to {_when(high)} not all read: {reasons[0]}")
        else:
            missing = sum(p.size for p in unread)
            notes.insert(0, f"{missing:,} older readings not read: {reasons[0]}")
    if notes:
        data.complete = False
        data.note = "; ".join(filter(None, [*notes, data.note]))
    data.slices = []
    return data


def _fetch_extra(extra: bounds.ExtraQuery, client: FhirClient) -> list[dict[str, Any]]:
    """One page of readings before a key's window (FhirError propagates)."""
    page = client.get_json(client.url_for(extra.url))
    found = client.follow({**page, "link": []}).resources  # one page, never its next links
    # a server that ignores the date parameter answers readings from anywhere: keep those in range
    return [r for r in found if extra.keep(r)]


def _merge_extras(data: KeyData, futures: list[Future[list[dict[str, Any]]]], budget: Callable[[], float]) -> KeyData:
    for future in futures:
        if not data.ok:
            future.cancel()
            continue
        try:
            extra = future.result(timeout=max(budget(), 0.0) + 0.05)
        except (FhirError, FutureTimeout) as exc:
            future.cancel()
            data.complete = False
            reason = exc.message if isinstance(exc, FhirError) else "hook time budget exhausted"
            data.note = "; ".join(filter(None, [data.note, f"readings before the window: {reason}"]))
            continue
        seen = {(r.get("resourceType"), r.get("id")) for r in data.resources}
        data.resources.extend(r for r in extra if (r.get("resourceType"), r.get("id")) not in seen)
    return data


def resolve(
    templates: Mapping[str, str],
    prefetch: Mapping[str, Any] | None,
    context: Mapping[str, Any],
    client: FhirClient | None,
    pool: QueryPool,
    *,
    budget_remaining: Callable[[], float],
    now: datetime | None = None,
    first: tuple[str, ...] = (),
) -> dict[str, KeyData]:
    """Resolve every template key; never raises for FHIR trouble (it is recorded per key).

    ``now`` (the engine's clock) turns on the date bounds of the service's own queries. ``first``: keys whose
    queries are sent before the others (a busy server answers in about the order it was asked).
    """
    results: dict[str, KeyData] = {}
    pending: dict[str, Future[KeyData]] = {}
    extras: dict[str, list[bounds.ExtraQuery]] = {}
    supplied: Mapping[str, Any] = prefetch or {}
    ordered = [k for k in first if k in templates] + [k for k in templates if k not in first]
    for key in ordered:
        template = templates[key]
        url = substitute(template, context)
        value = supplied.get(key, ABSENT)
        if value is None:
            results[key] = KeyData(key, [], "prefetch")
            continue
        if isinstance(value, dict) and value.get("resourceType") not in (None, "OperationOutcome"):
            if value.get("resourceType") == "Bundle":
                if client is not None and value.get("link"):
                    pending[key] = pool.executor.submit(_guarded_bundle, key, value, client)
                else:
                    results[key] = _from_bundle(key, value, None)
            else:
                results[key] = KeyData(key, [value], "prefetch")
            continue
        if value is ABSENT:
            why = None
        elif isinstance(value, dict) and value.get("resourceType") == "OperationOutcome":
            why = "prefetch carried an OperationOutcome"
        else:
            why = "prefetch value is not a FHIR resource"
        if client is None or url is None:
            reason = "no fhirServer to query" if client is None else "template token could not be filled"
            results[key] = KeyData(key, [], "none", False, False, f"{why or 'not in prefetch'}; {reason}")
            continue
        plan = bounds.plan(key, url, now) if not _is_read(url) else None
        pending[key] = pool.executor.submit(_fetch, key, url, client, why=why, plan=plan, sliced=True)
        if plan is not None and plan.extras:
            extras[key] = list(plan.extras)
    # The extra queries (readings before a window) are queued right behind every key's first query, so the pool
    # sends the first pages first and the extras run alongside them: waiting for the first pages (or for a part
    # of the budget) cost every record one more round trip (bench scenario 4: hook p50 1.43 s -> 2.06 s; scenario
    # 3: 1.62 -> 2.43 x the slowest query). A dense window's later pages (offset pages or slices, newest first)
    # start as soon as its first page is in.
    extra_futures: dict[str, list[Future[list[dict[str, Any]]]]] = {
        key: [pool.executor.submit(_fetch_extra, extra, client) for extra in queries]
        for key, queries in extras.items() if client is not None}
    keys = {future: key for key, future in pending.items()}
    slice_futures: dict[str, list[tuple[bounds.Slice, Future[tuple[list[dict[str, Any]], str | None]]]]] = {}
    waiting: set[Future[KeyData]] = set(keys)
    while waiting:
        left = budget_remaining()
        if left <= 0:
            break
        done, waiting = wait(waiting, timeout=left + 0.05, return_when=FIRST_COMPLETED)
        for future in done:
            key = keys[future]
            results[key] = data = future.result()
            if client is not None and data.ok and data.slices and data.budget is not None:
                slice_futures[key] = [(part, pool.executor.submit(_fetch_slice, part, client, data.budget))
                                      for part in data.slices]
    for key, future in pending.items():
        if key not in results:
            future.cancel()
            results[key] = KeyData(key, [], "none", False, False, "hook time budget exhausted")
        if key in slice_futures:
            results[key] = _merge_slices(results[key], slice_futures[key], budget_remaining)
        if key in extra_futures:
            results[key] = _merge_extras(results[key], extra_futures[key], budget_remaining)
    return {key: results[key] for key in templates}


def _guarded_bundle(key: str, bundle: dict[str, Any], client: FhirClient) -> KeyData:
    try:
        return _from_bundle(key, bundle, client)
    except FhirError as exc:
        first = _from_bundle(key, {**bundle, "link": []}, None)
        first.complete = False
        first.note = f"next page could not be read: {exc.message}"
        return first
