"""Resolve each prefetch key the way CDS Hooks 2.0 defines it, falling back to the FHIR server.

Per key (``cds-hooks.md`` section 4):

- a resource or Bundle → use it; a Bundle's ``next`` links are followed through the FHIR server;
- ``null`` or an empty Bundle → no data (a successful, empty answer);
- an OperationOutcome → a failed prefetch: not trusted as data, re-fetched at most once from ``fhirServer``;
- key absent → query ``fhirServer`` with the template (bearer token when given, anonymous otherwise).

The service's own queries (absent or re-fetched keys) carry date bounds from the rules' windows when
``now`` is given, sorted newest first, and stop paging past the oldest date needed
(:mod:`cds_service.fhir.bounds`); prefetched values are used exactly as they came.

Independent server queries run concurrently under the hook's shared deadline. The outcome of every key
is recorded (source, completeness, a safe note) so that cards can say exactly what was and was not seen.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any
from urllib.parse import quote

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
           plan: bounds.Plan | None = None) -> KeyData:
    """Query the server for one key; ``why`` says what was wrong with the prefetch value (None: absent).

    ``plan``: the date-bounded form of a search (:func:`bounds.plan`); without it the template as is.
    """
    try:
        if _is_read(template_url):
            resource = client.read(template_url)
            data = KeyData(key, [resource], "fhir-server")
        elif plan is not None and plan.oldest is not None:
            stop = PageStop(plan.oldest, partial(bounds.passed, oldest=plan.oldest, time_of=plan.time_of))
            result = client.search(plan.url, stop=stop)
            data = KeyData(key, result.resources, "fhir-server", True, result.complete, result.note)
        else:
            result = client.search(template_url)
            data = KeyData(key, result.resources, "fhir-server", True, result.complete, result.note)
    except FhirError as exc:
        prefix = f"{why}; re-fetch failed: " if why else ""
        return KeyData(key, [], "none", False, False, prefix + exc.message)
    if why:
        data.note = f"{why}; re-fetched from the FHIR server"
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
) -> dict[str, KeyData]:
    """Resolve every template key; never raises for FHIR trouble (it is recorded per key).

    ``now`` (the engine's clock) turns on the date bounds of the service's own queries.
    """
    results: dict[str, KeyData] = {}
    pending: dict[str, Future[KeyData]] = {}
    extras: dict[str, list[bounds.ExtraQuery]] = {}
    supplied: Mapping[str, Any] = prefetch or {}
    for key, template in templates.items():
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
        pending[key] = pool.executor.submit(_fetch, key, url, client, why=why, plan=plan)
        if plan is not None and plan.extras:
            extras[key] = list(plan.extras)
    # the extra queries after every key's own, so that a small pool serves the keys first
    extra_futures = {key: [pool.executor.submit(_fetch_extra, extra, client) for extra in queries]
                     for key, queries in extras.items() if client is not None}
    for key, future in pending.items():
        try:
            results[key] = future.result(timeout=max(budget_remaining(), 0.0) + 0.05)
        except FutureTimeout:
            future.cancel()
            results[key] = KeyData(key, [], "none", False, False, "hook time budget exhausted")
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
