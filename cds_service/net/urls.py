"""URLs the service may contact: the parsed allowlist and the checks on every outbound URL; loopback hosts.

An allowlist entry (``NMS_CDS_FHIR_ALLOWLIST``) is parsed into scheme, host, port and path prefix, normalised
(host in lower case, ``:443``/``:80`` the same as no port, no trailing slash). A URL is admitted when its
parsed components match an entry: same scheme, host and port, and a path equal to the prefix or below it
(``/r4`` admits ``/r4/Patient/1``, never ``/r4-evil``). Nothing is compared as a string prefix.

Before any matching, a URL is refused when its path could mean something else to the FHIR server or to a
proxy in front of it:

- dot segments in any spelling: ``..``, ``%2e%2e``, ``%252e%252e`` (double encoding is refused as such),
  fullwidth ``．．`` (U+FF0E) and other Unicode dot look-alikes (NFKC, plus a list of characters NFKC keeps);
- ``;`` path parameters (``/..;/admin``: Tomcat and Jetty read ``..;`` as ``..``), backslashes, encoded ``/``
  or ``\\``, empty segments, control characters and whitespace, any other non-ASCII character;
- credentials (userinfo, even empty) and fragments; for the ``fhirServer`` base also a query (``<base>?@host/``).

Every :class:`UrlRefused` message is a fixed text: it never repeats the URL, which may hold patient ids.
"""

from __future__ import annotations

import ipaddress
import json
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote, urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")
#: DNS labels; "_" is allowed because container and service-discovery names use it (``fhir_server``).
_HOST = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*")
_SEPARATORS = re.compile(r"[\s,;]+")
_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_NON_ASCII = re.compile(r"[^\x00-\x7e]")
_IP_LIKE = re.compile(r"^[0-9.]+$|:")
#: Characters that look like "." and that NFKC does not map to it (NFKC already maps U+FF0E, U+2024,
#: U+FE52 and the leaders U+2025/U+2026). Sources: Unicode confusables.txt entries for U+002E.
DOT_LOOKALIKES = frozenset("\u3002\uff61\u0701\u0702\u06d4\u0589\u2e3c\ua4f8\ua60e\u00b7\u2219\u22c5\u2027\u0660\u06f0")


class UrlRefused(ValueError):
    """The URL may not be contacted; the message is safe to log and to show (it never quotes the URL)."""


@dataclass(frozen=True, slots=True)
class ParsedUrl:
    """An absolute http(s) URL split into normalised components (``path`` without a trailing slash)."""

    scheme: str
    host: str
    port: int
    path: str
    query: str | None = None

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if DEFAULT_PORTS[self.scheme] == self.port else f":{self.port}"
        return f"{self.scheme}://{host}{port}"

    def __str__(self) -> str:
        return self.origin + self.path + ("" if self.query is None else "?" + self.query)

    def is_under(self, base: ParsedUrl) -> bool:
        """Same scheme, host and port, and the path is the base's path or below it."""
        if (self.scheme, self.host, self.port) != (base.scheme, base.host, base.port):
            return False
        return not base.path or self.path == base.path or self.path.startswith(base.path + "/")


def _host(raw: str | None) -> str:
    if not raw:
        raise UrlRefused("has no host")
    host = raw.lower().removesuffix(".")
    if _IP_LIKE.search(host):
        try:
            return str(ipaddress.ip_address(host))
        except ValueError:
            raise UrlRefused("has a host that is not a valid IP address") from None
    if not _HOST.fullmatch(host):
        raise UrlRefused("has a host name that is not plain ASCII letters, digits, '-', '_' and '.' "
                         "(write internationalised names in their xn-- form)")
    return host


def _dotted(segment: str) -> bool:
    if segment.isascii():
        return bool(segment) and not segment.strip(".")
    folded = "".join("." if ch in DOT_LOOKALIKES else ch for ch in unicodedata.normalize("NFKC", segment))
    return bool(folded) and not folded.strip(".")


def check_path(path: str) -> str:
    """Return the path without a trailing slash, or raise :class:`UrlRefused` (see the module docstring)."""
    if ";" in path:
        raise UrlRefused("has a ';' path parameter")
    if re.search(r"%(?:2[fF]|5[cC])", path):
        raise UrlRefused("has an encoded '/' or '\\' in its path")
    decoded = unquote(path, errors="strict") if "%" in path else path
    if _PERCENT.search(decoded):
        raise UrlRefused("has double percent-encoding in its path")
    if ";" in decoded:
        raise UrlRefused("has a ';' path parameter")
    segments = decoded.split("/")
    if any(_dotted(segment) for segment in segments):
        raise UrlRefused("has a '.' or '..' path segment (in some spelling)")
    if _CONTROL.search(decoded):
        raise UrlRefused("has control characters or spaces in its path")
    if _NON_ASCII.search(decoded):
        raise UrlRefused("has non-ASCII characters in its path")
    trimmed = path.rstrip("/")
    if "//" in trimmed:
        raise UrlRefused("has an empty path segment ('//')")
    return trimmed


def parse_url(url: str, *, allow_query: bool) -> ParsedUrl:
    """Parse and check one absolute http(s) URL; :class:`UrlRefused` names the problem."""
    if not isinstance(url, str) or not url:
        raise UrlRefused("is empty")
    if _CONTROL.search(url):
        raise UrlRefused("has control characters or spaces")
    if "\\" in url:
        raise UrlRefused("has a backslash")
    if "#" in url:
        raise UrlRefused("has a fragment ('#')")
    if not allow_query and "?" in url:
        raise UrlRefused("has a query ('?'); a FHIR base URL has none")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UrlRefused("is not a valid URL (bad host or port)") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise UrlRefused("is not an absolute http(s) URL")
    if "@" in parts.netloc:
        raise UrlRefused("carries credentials (user info) in the URL")
    host = _host(parts.hostname)
    try:
        path = check_path(parts.path)
    except UnicodeDecodeError:
        raise UrlRefused("has percent-encoding that is not UTF-8 in its path") from None
    return ParsedUrl(scheme, host, port or DEFAULT_PORTS[scheme], path, parts.query if "?" in url else None)


@lru_cache(maxsize=256)
def parse_allowlist_entry(entry: str) -> ParsedUrl:
    """One ``NMS_CDS_FHIR_ALLOWLIST`` entry; ``ValueError`` with a one-line message naming the entry."""
    shown = re.sub(r"(?<=://)[^/?#]*@", "***@", entry)  # never repeat credentials
    shown = shown if len(shown) <= 120 else shown[:117] + "..."
    try:
        parsed = parse_url(entry.strip(), allow_query=False)
    except UrlRefused as exc:
        raise ValueError(f"NMS_CDS_FHIR_ALLOWLIST entry {shown!r} {exc}; each entry is a FHIR base URL "
                         "such as https://fhir.example.org/r4") from None
    return parsed


def split_allowlist(value: str) -> list[str]:
    """Entries from the environment value: a JSON list, or separated by commas, semicolons or whitespace."""
    text = value.strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
        except ValueError:
            raise ValueError("NMS_CDS_FHIR_ALLOWLIST starts with '[' but is not a JSON list of strings") from None
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise ValueError("NMS_CDS_FHIR_ALLOWLIST starts with '[' but is not a JSON list of strings")
        return [item.strip() for item in items if item.strip()]
    return [part for part in _SEPARATORS.split(text) if part]


def normalise_allowlist(entries: list[str]) -> list[str]:
    """Parse every entry (``ValueError`` on the first bad one) and return their canonical forms, deduplicated."""
    canonical: list[str] = []
    for entry in entries:
        form = str(parse_allowlist_entry(entry))
        if form not in canonical:
            canonical.append(form)
    return canonical


__all__ = [
    "DOT_LOOKALIKES",
    "ParsedUrl",
    "UrlRefused",
    "check_path",
    "normalise_allowlist",
    "parse_allowlist_entry",
    "parse_url",
    "split_allowlist",
]


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (a name, an IPv4 or a bracketed IPv6 address) is this machine: ``localhost`` or a
    loopback address."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
