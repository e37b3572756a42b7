"""A search over a whole server, page by page: what the outcome report and the surveillance census read.

Follows the searchset's ``next`` links up to a page cap, each request with the given connect and read timeouts;
an answer that is not a Bundle is a ``ValueError``; a 429 or 503 with ``Retry-After`` is :class:`ServerBusy`
(the caller waits, never hammers a busy server); any other HTTP error is the ``requests`` library's own exception.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

from requests import Response, Session

MAX_RETRY_AFTER = 3600.0  # seconds: a longer Retry-After is read as an hour


class ServerBusy(Exception):
    """The FHIR server answered 429 or 503 with ``Retry-After``: ask again no sooner than ``retry_after`` s."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"the FHIR server asks to retry after {retry_after:g} s")
        self.retry_after = retry_after


def retry_after(response: Response) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), at most an hour; None without one."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max((when - datetime.now(when.tzinfo)).total_seconds(), 0.0), MAX_RETRY_AFTER)


@dataclass(frozen=True)
class PageLimits:
    connect_timeout: float
    read_timeout: float
    max_pages: int
    page_size: int = 200


@dataclass
class Paging:
    """What the searches of one reader cost: requests sent, and the searches stopped at the page cap."""

    requests: int = 0
    capped: list[str] = field(default_factory=list)

    def resources_of(self, session: Session, url: str, params: dict[str, str], headers: dict[str, str],
                     limits: PageLimits, label: str) -> Iterator[Any]:
        """Every entry's ``resource`` of the search ``url?params`` (``_count`` added), page by page."""
        next_url: str | None = url
        query: dict[str, str] | None = {**params, "_count": str(limits.page_size)}
        pages = 0
        while next_url is not None:
            if pages == limits.max_pages:
                self.capped.append(label)
                return
            response = session.get(next_url, params=query, headers=headers,
                                   timeout=(limits.connect_timeout, limits.read_timeout))
            self.requests += 1
            if response.status_code in (429, 503) and (wait := retry_after(response)) is not None:
                raise ServerBusy(wait)
            response.raise_for_status()
            bundle = response.json()
            if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
                raise ValueError(f"{label} search: the server did not answer with a Bundle")
            pages += 1
            for entry in bundle.get("entry") or []:
                yield entry.get("resource") if isinstance(entry, dict) else entry
            next_url = next((link.get("url") for link in bundle.get("link") or []
                             if isinstance(link, dict) and link.get("relation") == "next"), None)
            query = None  # the next link carries the query
