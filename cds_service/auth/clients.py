"""The trusted CDS clients file (``NMS_CDS_TRUSTED_CLIENTS``): who may call, with which keys, ``jku`` and tenant.

Read once at start-up; every problem is a :class:`TrustedClientsError` naming the file and the entry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cds_service.auth.keys import VerificationKey, parse_jwks
from cds_service.auth.policy import PolicyOverride, parse_override
from cds_service.errors import ConfigError
from cds_service.net.urls import is_loopback


class TrustedClientsError(ConfigError):
    """The trusted clients configuration is missing or invalid (raised at start-up, never per request)."""


@dataclass(frozen=True)
class TrustedClient:
    iss: str
    keys: Mapping[str, VerificationKey]
    jwks_url: str | None = None
    tenant: str | None = None
    #: ``jku`` header values a token of this client may carry: the ``jku`` list and the ``jwks_url``.
    #: Only ``jwks_url`` is ever fetched; the others are accepted as labels and never contacted.
    jku: frozenset[str] = frozenset()
    #: The client's own ``policy`` members (cds_service/auth/policy.py); None: the default policy.
    policy: PolicyOverride | None = None


def _check_jwks_url(url: Any, member: str = "jwks_url") -> str:
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"'{member}' must be a non-empty string")
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise ValueError(f"'{member}' is not a valid URL") from None
    if parts.scheme not in {"https", "http"} or not host:
        raise ValueError(f"'{member}' must be an absolute https URL")
    if parts.scheme == "http" and not is_loopback(host):
        raise ValueError(f"'{member}' must use https (http only for loopback)")
    if "@" in parts.netloc or parts.fragment or "#" in url:
        raise ValueError(f"'{member}' must not carry credentials or a fragment")
    return url


def _check_jku_list(value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ValueError("'jku' must be a URL or a non-empty array of URLs")
    return [_check_jwks_url(item, "jku") for item in items]


def load_trusted_clients(path: Path | None) -> dict[str, TrustedClient]:
    """Read and validate the trusted clients file; :class:`TrustedClientsError` names the problem and file."""
    if path is None:
        raise TrustedClientsError(
            "NMS_CDS_AUTH=jwt needs NMS_CDS_TRUSTED_CLIENTS, a JSON file listing the trusted CDS clients "
            "(see docs/security.md); for local development only, NMS_CDS_AUTH=off"
        )
    where = f"trusted clients file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TrustedClientsError(f"{where} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TrustedClientsError(f"{where} cannot be read ({type(exc).__name__})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        position = f"line {exc.lineno} column {exc.colno}"
        raise TrustedClientsError(f"{where} is not valid JSON ({exc.msg} at {position})") from None
    if not isinstance(data, list):
        raise TrustedClientsError(f"{where} must hold a JSON array of client objects")
    if not data:
        raise TrustedClientsError(f"{where} lists no clients; every request would be refused")
    clients: dict[str, TrustedClient] = {}
    for i, entry in enumerate(data):
        label = f"{where}, entry #{i + 1}"
        if not isinstance(entry, dict):
            raise TrustedClientsError(f"{label} is not a JSON object")
        iss = entry.get("iss")
        if not isinstance(iss, str) or not iss.strip():
            raise TrustedClientsError(f"{label} has no 'iss' string")
        label = f"{label} (iss {iss[:200]!r})"
        if iss in clients:
            raise TrustedClientsError(f"{label} repeats an issuer listed before")
        unknown = sorted(set(entry) - {"iss", "jwks", "jwks_url", "jku", "tenant", "policy", "comment"})
        if unknown:
            raise TrustedClientsError(f"{label} has unknown member(s) {', '.join(unknown)}")
        if "jwks" not in entry and "jwks_url" not in entry:
            raise TrustedClientsError(f"{label} needs 'jwks' (a JWK Set object) or 'jwks_url'")
        keys: dict[str, VerificationKey] = {}
        if "jwks" in entry:
            try:
                keys, problems = parse_jwks(entry["jwks"])
            except ValueError as exc:
                raise TrustedClientsError(f"{label}: 'jwks' {exc}") from None
            if problems:
                raise TrustedClientsError(f"{label}: 'jwks' {problems[0]}")
            if not keys:
                raise TrustedClientsError(f"{label}: 'jwks' holds no keys")
        jwks_url = None
        if "jwks_url" in entry:
            try:
                jwks_url = _check_jwks_url(entry["jwks_url"])
            except ValueError as exc:
                raise TrustedClientsError(f"{label}: {exc}") from None
        jku: set[str] = {jwks_url} if jwks_url else set()
        if "jku" in entry:
            try:
                jku.update(_check_jku_list(entry["jku"]))
            except ValueError as exc:
                raise TrustedClientsError(f"{label}: {exc}") from None
        tenant = entry.get("tenant")
        if tenant is not None and (not isinstance(tenant, str) or not tenant):
            raise TrustedClientsError(f"{label}: 'tenant' must be a non-empty string when given")
        policy = None
        if "policy" in entry:
            try:
                policy = parse_override(entry["policy"])
            except ValueError as exc:
                raise TrustedClientsError(f"{label}: {exc}") from None
        clients[iss] = TrustedClient(iss=iss, keys=keys, jwks_url=jwks_url, tenant=tenant, jku=frozenset(jku),
                                     policy=policy)
    return clients
