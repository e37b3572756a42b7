"""A small FHIR R4 REST client built for the hook path.

Explicit defaults (all from :class:`~cds_service.config.Settings`):

- every request has a connect and a read timeout, both clipped to what is left of the hook's budget;
- bodies are streamed and abandoned past ``fhir_max_response_bytes`` or when the budget runs out, so a
  server that trickles bytes cannot hold a worker;
- redirects are followed only within the same allowlisted base; ``next`` links likewise, up to
  ``fhir_max_pages`` pages and ``fhir_max_resources`` resources, and never twice to the same URL;
- the bearer token is sent only to URLs under the request's ``fhirServer``.

Failures raise the :class:`~cds_service.errors.FhirError` subclasses. One connection pool per worker
process (thread-local sessions over a shared pool size) is reused across hook calls.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from cds_service import metrics
from cds_service.config import Settings
from cds_service.errors import (
    FhirAuthError,
    FhirBadResponse,
    FhirConnectionError,
    FhirError,
    FhirHttpError,
    FhirNotAllowed,
    FhirNotFound,
    FhirTimeout,
    FhirTlsError,
)
from cds_service.net.http import thread_session, tls_failure, trust_context, trust_hint
from cds_service.net.urls import ParsedUrl, UrlRefused, is_loopback, parse_allowlist_entry, parse_url

if TYPE_CHECKING:
    pass

log = logging.getLogger("cds_service.fhir")

ACCEPT = "application/fhir+json, application/json;q=0.9"
_MAX_REDIRECTS = 3
_CHUNK = 64 * 1024
#: FHIR R4 IssueType codes (http://hl7.org/fhir/R4/valueset-issue-type.html): the only OperationOutcome
#: text ever repeated; anything else a server writes there (even a lower-case word) is dropped.
ISSUE_CODES = frozenset({
    "invalid", "structure", "required", "value", "invariant", "security", "login", "unknown", "expired",
    "forbidden", "suppressed", "processing", "not-supported", "duplicate", "multiple-matches", "not-found",
    "deleted", "too-long", "code-invalid", "extension", "too-costly", "business-rule", "conflict", "transient",
    "lock-error", "no-store", "exception", "timeout", "incomplete", "throttled", "informational",
})


class Deadline:
    """Monotonic budget shared by every FHIR call of one hook invocation."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self._end - time.monotonic()

    def check(self, what: str) -> float:
        left = self.remaining()
        if left <= 0:
            raise FhirTimeout(f"hook time budget of {self.seconds:.2f}s exhausted during {what}")
        return left


def allowed_bases(settings: Settings) -> list[ParsedUrl]:
    """The parsed ``NMS_CDS_FHIR_ALLOWLIST`` (entries were validated when the settings were read)."""
    return [parse_allowlist_entry(entry) for entry in settings.fhir_allowlist]


def _check(url: str, settings: Settings, *, base: bool) -> ParsedUrl:
    try:
        parsed = parse_url(url, allow_query=not base)
    except UrlRefused as exc:
        raise FhirNotAllowed(f"{'fhirServer' if base else 'FHIR URL'} {exc}") from None
    if parsed.scheme == "http" and not (is_loopback(parsed.host) or settings.allow_insecure_fhir):
        raise FhirNotAllowed("fhirServer must use https (http is allowed for loopback only)")
    if not any(parsed.is_under(entry) for entry in allowed_bases(settings)):
        raise FhirNotAllowed("fhirServer is not in NMS_CDS_FHIR_ALLOWLIST")
    return parsed


def log_outbound_config(settings: Settings) -> None:
    """One start-up line: the effective (parsed, canonical) FHIR allowlist and where TLS trust comes from."""
    verify, source = settings.tls_trust
    trust_context(verify)  # load the CAs now, not on the first hook call
    bases = ", ".join(settings.fhir_allowlist) or "empty: fhirServer is never contacted (prefetch only)"
    trust = source if isinstance(verify, bool) else f"{source} {verify}"
    log.info(f"FHIR allowlist: {bases}; TLS trust for FHIR and JWKS calls: {trust}",
             extra={"event": "outbound-config"})


def check_base(url: str, settings: Settings) -> ParsedUrl:
    """Check a request's ``fhirServer`` (no query, fragment or credentials); return it parsed and normalised."""
    return _check(url, settings, base=True)


def check_allowed(url: str, settings: Settings) -> ParsedUrl:
    """Raise FhirNotAllowed unless ``url`` may be contacted under the allowlist, scheme and path rules."""
    return _check(url, settings, base=False)


_RESOURCE_NAME = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_PATH_WORD = re.compile(r"^(?:[A-Z][A-Za-z]{1,63}|_history|_search|\$[a-z][a-z-]{0,39}|metadata)$")


def resource_name(value: Any) -> str:
    """A server-supplied ``resourceType`` as safe text: the value only when it has the form of a FHIR
    resource name (letters, at most 64), otherwise a fixed phrase. Free text never reaches messages."""
    if isinstance(value, str) and _RESOURCE_NAME.fullmatch(value):
        return value
    return "no resourceType" if value is None else "an invalid resourceType"


def _safe_path(url: str, base_path: str = "") -> str:
    """The path of a URL for logs and messages: the (allowlisted) base path, then resource names and FHIR
    keywords; every other segment (ids: patient ids or text the server chose) is shown as ``{id}``. No
    host, no query values."""
    try:
        path = urlsplit(url).path
    except ValueError:
        return "/{id}"
    if base_path and (path == base_path or path.startswith(base_path + "/")):
        prefix, path = base_path, path[len(base_path):]
    else:
        prefix = ""
    words = [s if _PATH_WORD.fullmatch(s) else "{id}" for s in path.split("/") if s]
    return prefix + "/" + "/".join(words) if words or not prefix else prefix


@dataclass(slots=True)
class SearchResult:
    resources: list[dict[str, Any]] = field(default_factory=list)
    pages: int = 0
    complete: bool = True
    note: str | None = None
    passed_bound: bool = False  # paging stopped because a page went past the oldest date needed


@dataclass(frozen=True, slots=True)
class PageStop:
    """Stop paging once a newest-first page has gone past ``oldest`` (see :func:`bounds.passed`)."""

    oldest: datetime
    passed: Callable[[list[dict[str, Any]]], bool]


class FhirClient:
    """FHIR access for one hook invocation: a base URL, an optional token and a shared deadline."""

    def __init__(
        self,
        base_url: str,
        settings: Settings,
        deadline: Deadline,
        *,
        token: str | None = None,
        session_factory: Callable[[], requests.Session] | None = None,
    ) -> None:
        self._base = check_base(base_url, settings)
        self.base_url = str(self._base)
        self.settings = settings
        self.deadline = deadline
        self._token = token
        self._session_factory = session_factory or thread_session(settings.tls_trust[0], settings.fhir_pool_size)
        self.requests_made = 0

    # -- URL handling ------------------------------------------------------------------------------
    def _path(self, url: str) -> str:
        return _safe_path(url, self._base.path)

    def url_for(self, relative: str) -> str:
        return f"{self.base_url}/{relative.lstrip('/')}"

    def _within_base(self, url: str) -> bool:
        try:
            return parse_url(url, allow_query=True).is_under(self._base)
        except UrlRefused:
            return False

    def within_base(self, url: str) -> bool:
        """Whether ``url`` is under the fhirServer base (a link the client would follow)."""
        return self._within_base(url)

    # -- HTTP --------------------------------------------------------------------------------------
    @metrics.count_fhir_call  # nms_cds_fhir_requests_total{outcome}
    def get_json(self, url: str) -> dict[str, Any]:
        """GET one URL under the base and return its JSON object, following same-base redirects."""
        for _ in range(_MAX_REDIRECTS + 1):
            url = str(check_allowed(url, self.settings))  # canonical: host case, default port
            if not self._within_base(url):
                raise FhirNotAllowed("refusing to follow a URL outside the fhirServer base", url=self._path(url))
            response = self._send(url)
            if response.is_redirect:
                location = response.headers.get("Location", "")
                response.close()
                url = urljoin(url, location)
                continue
            return self._read_json(response, url)
        raise FhirBadResponse("too many redirects", url=self._path(url))

    def _send(self, url: str) -> requests.Response:
        left = self.deadline.check(f"GET {self._path(url)}")
        timeout = (min(self.settings.fhir_connect_timeout, left), min(self.settings.fhir_read_timeout, left))
        headers = {"Accept": ACCEPT}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        self.requests_made += 1
        try:
            return self._session_factory().get(
                url, headers=headers, timeout=timeout, allow_redirects=False, stream=True
            )
        except requests.Timeout as exc:
            raise FhirTimeout(f"timeout on GET {self._path(url)}", url=self._path(url)) from exc
        except requests.exceptions.SSLError as exc:
            what = tls_failure(exc)
            trust = self.settings.tls_trust[1]
            log.warning(f"TLS failure talking to the FHIR server: {what}",
                        extra={"event": "fhir-tls-failed", "reason": f"{what}; trusted CAs from {trust}"})
            raise FhirTlsError(f"TLS {what} on GET {self._path(url)} ({trust_hint(self.settings.tls_trust[1])})",
                               url=self._path(url)) from exc
        except requests.ConnectionError as exc:
            raise FhirConnectionError(f"connection failed on GET {self._path(url)}", url=self._path(url)) from exc
        except requests.RequestException as exc:
            raise FhirConnectionError(f"request failed on GET {self._path(url)}", url=self._path(url)) from exc

    def _read_json(self, response: requests.Response, url: str) -> dict[str, Any]:
        path = self._path(url)
        try:
            body = self._read_body(response, path)
        finally:
            response.close()
        status = response.status_code
        if status >= 400:
            detail = _outcome_text(body)
            message = f"FHIR server answered {status} on GET {path}" + (f": {detail}" if detail else "")
            if status in (401, 403):
                raise FhirAuthError(message, status=status, url=path)
            if status == 404:
                raise FhirNotFound(message, status=status, url=path)
            raise FhirHttpError(message, status=status, url=path)
        if status != 200:
            raise FhirBadResponse(f"unexpected status {status} on GET {path}", url=path)
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as exc:  # also: a number of more than 4300 digits, absurd nesting
            raise FhirBadResponse(f"FHIR server sent something that is not JSON on GET {path}", url=path) from exc
        if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
            raise FhirBadResponse(f"FHIR server sent JSON that is not a resource on GET {path}", url=path)
        return data

    def _read_body(self, response: requests.Response, path: str) -> bytes:
        limit = self.settings.fhir_max_response_bytes
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise FhirBadResponse(f"response larger than {limit} bytes on GET {path}", url=path)
        chunks: list[bytes] = []
        size = 0
        raw = response.raw
        try:
            # read1 returns whatever has arrived (at most _CHUNK bytes) instead of waiting for a full
            # chunk, so a server that trickles bytes is cut off when the hook's budget runs out.
            while chunk := raw.read1(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise FhirBadResponse(f"response larger than {limit} bytes on GET {path}", url=path)
                if self.deadline.remaining() <= 0:
                    raise FhirTimeout(f"hook time budget exhausted while reading GET {path}", url=path)
                chunks.append(chunk)
        except requests.Timeout as exc:
            raise FhirTimeout(f"read timeout on GET {path}", url=path) from exc
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            raise FhirConnectionError(f"connection broke while reading GET {path}", url=path) from exc
        except (urllib3.exceptions.ReadTimeoutError, TimeoutError) as exc:
            raise FhirTimeout(f"read timeout on GET {path}", url=path) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise FhirConnectionError(f"connection broke while reading GET {path}", url=path) from exc
        return b"".join(chunks)

    # -- FHIR operations ---------------------------------------------------------------------------
    def read(self, relative: str) -> dict[str, Any]:
        data = self.get_json(self.url_for(relative))
        expected = relative.split("?", 1)[0].strip("/").split("/")[0]
        if data.get("resourceType") == "OperationOutcome":
            raise FhirBadResponse(f"OperationOutcome instead of {resource_name(expected)}: "
                                  f"{_outcome_text_obj(data)}", url=self._path(self.url_for(relative)))
        if data.get("resourceType") != expected:
            raise FhirBadResponse(f"expected {resource_name(expected)}, got {resource_name(data.get('resourceType'))}",
                                  url=self._path(self.url_for(relative)))
        return data

    def search(self, relative: str, *, stop: PageStop | None = None) -> SearchResult:
        """Run a search and follow ``next`` links within the caps (and until ``stop`` says so)."""
        return self.follow(self.get_json(self.url_for(relative)), first_url=self.url_for(relative), stop=stop)

    def follow(self, bundle: dict[str, Any], *, first_url: str | None = None,
               stop: PageStop | None = None) -> SearchResult:
        """Collect a searchset Bundle's resources, fetching ``next`` pages within the caps.

        With ``stop``, a page that has gone past the oldest date needed ends the paging: the result is
        complete for the window asked for (``passed_bound``). A later page that cannot be read (timeout, the
        hook's budget, an error) ends the paging too: the pages read are kept and the result is incomplete.
        """
        result = SearchResult()
        seen: set[str] = {first_url} if first_url else set()
        page: dict[str, Any] | None = bundle
        while page is not None:
            if page.get("resourceType") == "OperationOutcome":
                raise FhirBadResponse(f"OperationOutcome instead of a Bundle: {_outcome_text_obj(page)}")
            if page.get("resourceType") != "Bundle":
                raise FhirBadResponse(f"expected a Bundle, got {resource_name(page.get('resourceType'))}")
            result.pages += 1
            on_page: list[dict[str, Any]] = []
            for resource in _entries(page):
                if len(result.resources) >= self.settings.fhir_max_resources:
                    result.complete = False
                    result.note = f"stopped at {self.settings.fhir_max_resources} resources"
                    return result
                result.resources.append(resource)
                on_page.append(resource)
            next_url = _next_link(page)
            if not next_url:
                return result
            if stop is not None and stop.passed(on_page):
                result.passed_bound = True
                return result
            if next_url in seen:
                result.complete = False
                result.note = "next link loops back to a page already read"
                return result
            if result.pages >= self.settings.fhir_max_pages:
                result.complete = False
                result.note = f"stopped after {self.settings.fhir_max_pages} pages"
                return result
            if not self._within_base(next_url):
                result.complete = False
                result.note = "next link points outside the fhirServer base; not followed"
                return result
            seen.add(next_url)
            try:
                page = self.get_json(next_url)
            except FhirError as exc:  # keep the pages already read (newest first): the key is only partly read
                result.complete = False
                result.note = f"page {result.pages + 1} could not be read: {exc.message}"
                return result
        return result  # pragma: no cover - loop exits by return


def _entries(bundle: dict[str, Any]) -> Iterable[dict[str, Any]]:
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        resource = entry.get("resource")
        search = entry.get("search")
        if isinstance(search, dict) and search.get("mode") == "outcome":
            continue
        if isinstance(resource, dict) and isinstance(resource.get("resourceType"), str):
            yield resource


def _next_link(bundle: dict[str, Any]) -> str | None:
    links = bundle.get("link")
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return str(link["url"])
    return None


def _outcome_text_obj(outcome: dict[str, Any]) -> str:
    """The OperationOutcome's coded ``issue.code`` values only: free text (diagnostics, details.text) can
    echo patient data or tokens, and this text reaches logs, 412 answers and cards."""
    issues = outcome.get("issue")
    if not isinstance(issues, list):
        return ""
    codes = []
    for issue in issues[:3]:
        code = issue.get("code") if isinstance(issue, dict) else None
        if isinstance(code, str) and code in ISSUE_CODES:
            codes.append(code)
    return ("issue code " + ", ".join(codes)) if codes else ""


def _outcome_text(body: bytes) -> str:
    try:
        data = json.loads(body[:65536])
    except (ValueError, RecursionError):
        return ""
    if isinstance(data, dict) and data.get("resourceType") == "OperationOutcome":
        return _outcome_text_obj(data)
    return ""


class _ContextExecutor(ThreadPoolExecutor):
    """Runs each task in a copy of the submitter's context, so that a query planned in a worker thread reads
    the same knowledge (cds_service.clinical.valuesets.active) as the request that submitted it."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)


class QueryPool:
    """Threads that run one hook's independent FHIR queries concurrently (one pool per worker)."""

    def __init__(self, workers: int) -> None:
        self.executor: ThreadPoolExecutor = _ContextExecutor(max_workers=workers, thread_name_prefix="fhir")

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


__all__ = [
    "Deadline",
    "FhirClient",
    "FhirError",
    "PageStop",
    "QueryPool",
    "SearchResult",
    "check_allowed",
    "check_base",
    "log_outbound_config",
    "resource_name",
]
