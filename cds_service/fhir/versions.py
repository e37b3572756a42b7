"""One resource per type and id: when a resource is listed more than once (two overlapping queries, or
several versions of it), the newest version is used and the older ones are counted as duplicates."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from cds_service.fhir.extract import Extracted


def _version(raw: Mapping[str, Any]) -> tuple[str, str]:
    """(lastUpdated, versionId) of ``meta``, "" where absent or not a string."""
    meta = raw.get("meta")
    if not isinstance(meta, dict):
        return ("", "")
    updated, version = meta.get("lastUpdated"), meta.get("versionId")
    return (updated if isinstance(updated, str) else "", version if isinstance(version, str) else "")


def _instant(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value).astimezone(UTC) if value else None
    except (ValueError, OverflowError):
        return None


def _newer(version: tuple[str, str], than: tuple[str, str]) -> bool:
    """Whether ``version`` is a later version than ``than``: by ``meta.lastUpdated`` when both have one and
    they differ, else by a numeric ``meta.versionId``; when neither tells, not newer (the first listed stays)."""
    new, old = _instant(version[0]), _instant(than[0])
    if new is not None and old is not None and new != old:
        return new > old
    if version[1].isdigit() and than[1].isdigit() and int(version[1]) != int(than[1]):
        return int(version[1]) > int(than[1])
    return False


def first_listing(raw: Mapping[str, Any], out: Extracted) -> str:
    """One resource per type and id, the newest version winning: "first" (the first of its id: use it),
    "newer" (a later version of one already used: use it instead, the caller removes the older), "older" (an
    older or undated repeat: not used, counted as a duplicate unless it is the very same JSON) or "no id"."""
    ident, kind = raw.get("id"), raw.get("resourceType")
    if not isinstance(ident, str) or not ident or not isinstance(kind, str):
        return "no id"
    key = (kind, ident)
    known = out.seen.get(key)
    if known is None:
        out.seen[key] = raw
        return "first"
    if known is raw or known == raw:
        return "older"  # the same resource in two answers (e.g. two overlapping queries): nothing is lost
    out.duplicates += 1
    # versions are compared only for a repeated id (rare), not read for every resource
    if _newer(_version(raw), _version(known)):
        out.seen[key] = raw
        return "newer"
    return "older"


def newest(resources: Iterable[Mapping[str, Any]], out: Extracted) -> list[Mapping[str, Any]]:
    """``resources`` with one resource per type and id (the newest version, at the place of the first
    listing); resources without an id are all kept."""
    kept: list[Mapping[str, Any]] = []
    for raw in resources:
        verdict = first_listing(raw, out)
        if verdict == "newer":
            key = (raw["resourceType"], raw["id"])
            kept = [r for r in kept if (r.get("resourceType"), r.get("id")) != key]
        if verdict != "older":
            kept.append(raw)
    return kept

