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

import ipaddress
import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

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
)

ACCEPT = "application/fhir+json, application/json;q=0.9"
_MAX_REDIRECTS = 3
_CHUNK = 64 * 1024
_ISSUE_CODE = re.compile(r"^[a-z][a-z-]{0,39}$")  # FHIR IssueType codes


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


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _normalise_base(url: str) -> str:
    return url.rstrip("/")


def check_allowed(url: str, settings: Settings) -> None:
    """Raise FhirNotAllowed unless ``url`` may be contacted under the allowlist and scheme rules."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise FhirNotAllowed("fhirServer must be an absolute http(s) URL")
    if parts.username or parts.password:
        raise FhirNotAllowed("fhirServer must not carry credentials in the URL")
    if parts.scheme == "http" and not (is_loopback(parts.hostname) or settings.allow_insecure_fhir):
        raise FhirNotAllowed("fhirServer must use https (http is allowed for loopback only)")
    if "\\" in parts.path or any(seg in {".", ".."} for seg in unquote(parts.path).split("/")):
        # "/r4/../admin" would pass the prefix test below, then be normalised off the allowlisted base
        raise FhirNotAllowed("fhirServer must not contain '.' or '..' path segments")
    target = _normalise_base(url)
    for prefix in settings.fhir_allowlist:
        base = _normalise_base(prefix)
        if target == base or target.startswith(base + "/") or target.startswith(base + "?"):
            return
    raise FhirNotAllowed("fhirServer is not in NMS_CDS_FHIR_ALLOWLIST")


def _safe_path(url: str) -> str:
    """Path of a URL without host or query values, for logs and error messages."""
    parts = urlsplit(url)
    return parts.path or "/"


@dataclass(slots=True)
class SearchResult:
    resources: list[dict[str, Any]] = field(default_factory=list)
    pages: int = 0
    complete: bool = True
    note: str | None = None


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
        check_allowed(base_url, settings)
        self.base_url = _normalise_base(base_url)
        self.settings = settings
        self.deadline = deadline
        self._token = token
        self._session_factory = session_factory or thread_session(settings)
        self.requests_made = 0

    # -- URL handling ------------------------------------------------------------------------------
    def url_for(self, relative: str) -> str:
        return f"{self.base_url}/{relative.lstrip('/')}"

    def _within_base(self, url: str) -> bool:
        return url == self.base_url or url.startswith(self.base_url + "/") or url.startswith(
            self.base_url + "?"
        )

    # -- HTTP --------------------------------------------------------------------------------------
    @metrics.count_fhir_call  # nms_cds_fhir_requests_total{outcome}
    def get_json(self, url: str) -> dict[str, Any]:
        """GET one URL under the base and return its JSON object, following same-base redirects."""
        for _ in range(_MAX_REDIRECTS + 1):
            if not self._within_base(url):
                raise FhirNotAllowed("refusing to follow a URL outside the fhirServer base", url=_safe_path(url))
            check_allowed(url, self.settings)
            response = self._send(url)
            if response.is_redirect:
                location = response.headers.get("Location", "")
                response.close()
                url = urljoin(url, location)
                continue
            return self._read_json(response, url)
        raise FhirBadResponse("too many redirects", url=_safe_path(url))

    def _send(self, url: str) -> requests.Response:
        left = self.deadline.check(f"GET {_safe_path(url)}")
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
            raise FhirTimeout(f"timeout on GET {_safe_path(url)}", url=_safe_path(url)) from exc
        except requests.ConnectionError as exc:
            raise FhirConnectionError(f"connection failed on GET {_safe_path(url)}", url=_safe_path(url)) from exc
        except requests.RequestException as exc:
            raise FhirConnectionError(f"request failed on GET {_safe_path(url)}", url=_safe_path(url)) from exc

    def _read_json(self, response: requests.Response, url: str) -> dict[str, Any]:
        path = _safe_path(url)
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
            raise FhirBadResponse(f"OperationOutcome instead of {expected}: {_outcome_text_obj(data)}")
        if data.get("resourceType") != expected:
            raise FhirBadResponse(f"expected {expected}, got {data.get('resourceType')!r}", url=_safe_path(relative))
        return data

    def search(self, relative: str) -> SearchResult:
        """Run a search and follow ``next`` links within the caps."""
        return self.follow(self.get_json(self.url_for(relative)), first_url=self.url_for(relative))

    def follow(self, bundle: dict[str, Any], *, first_url: str | None = None) -> SearchResult:
        """Collect a searchset Bundle's resources, fetching ``next`` pages within the caps."""
        result = SearchResult()
        seen: set[str] = {first_url} if first_url else set()
        page: dict[str, Any] | None = bundle
        while page is not None:
            if page.get("resourceType") == "OperationOutcome":
                raise FhirBadResponse(f"OperationOutcome instead of a Bundle: {_outcome_text_obj(page)}")
            if page.get("resourceType") != "Bundle":
                raise FhirBadResponse(f"expected a Bundle, got {page.get('resourceType')!r}")
            result.pages += 1
            for resource in _entries(page):
                if len(result.resources) >= self.settings.fhir_max_resources:
                    result.complete = False
                    result.note = f"stopped at {self.settings.fhir_max_resources} resources"
                    return result
                result.resources.append(resource)
            next_url = _next_link(page)
            if not next_url:
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
            page = self.get_json(next_url)
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
        if isinstance(code, str) and _ISSUE_CODE.match(code):
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


# -- connection pooling ------------------------------------------------------------------------------
_local = threading.local()


def thread_session(settings: Settings) -> Callable[[], requests.Session]:
    """One ``requests.Session`` per thread (requests does not promise thread safety), pooled and reused."""

    def factory() -> requests.Session:
        session: requests.Session | None = getattr(_local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False  # no proxies or netrc credentials picked up from the environment
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=settings.fhir_pool_size, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            _local.session = session
        return session

    return factory


class QueryPool:
    """Threads that run one hook's independent FHIR queries concurrently (one pool per worker)."""

    def __init__(self, workers: int) -> None:
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fhir")

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


__all__ = [
    "Deadline",
    "FhirClient",
    "FhirError",
    "QueryPool",
    "SearchResult",
    "check_allowed",
    "is_loopback",
    "thread_session",
]
