"""Times on a card: in the site's time zone, written compactly ("6 Dec 14:05").

The clinical core works in UTC and writes the times in its own words as ``2026-12-06 14:05 UTC``; the card layer
rewrites those in the zone of the site: ``NMS_CDS_TIME_ZONE`` (an IANA name) when set, else the UTC offset the
record's own timestamps carry (the most common one among them; UTC when they carry none).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

_CORE_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}) UTC")
_OFFSET = re.compile(r"T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(Z|[+-]\d{2}:\d{2})$")
_TIME_FIELDS = ("effectiveDateTime", "effectiveInstant", "issued", "authoredOn", "recordedDate", "onsetDateTime")


@dataclass(frozen=True)
class CardStyle:
    """How this call's card is written: the zone of its times and the trend view's launch URL (None: no link)."""

    zone: tzinfo = UTC
    trend_url: str | None = None


def when(moment: datetime, zone: tzinfo) -> str:
    """``6 Dec 14:05`` in ``zone`` (the year only when it is not the year of the card's "now" is left to the
    reader: cards look back days, not years)."""
    local = moment.astimezone(zone)
    return f"{local.day} {local.strftime('%b %H:%M')}"


def zone_name(zone: tzinfo, at: datetime) -> str:
    """The zone as a reader knows it: ``CET``, ``UTC``, ``UTC+05:30``."""
    name = at.astimezone(zone).tzname() or "UTC"
    return name if re.fullmatch(r"[A-Z]{2,5}", name) else "UTC" + name.removeprefix("UTC")


def localise(text: str, zone: tzinfo) -> str:
    """``text`` (the clinical core's words) with every ``YYYY-MM-DD HH:MM UTC`` written as :func:`when` in
    ``zone``."""
    def one(m: re.Match[str]) -> str:
        y, mo, d, h, mi = (int(g) for g in m.groups())
        return when(datetime(y, mo, d, h, mi, tzinfo=UTC), zone)
    return _CORE_TIME.sub(one, text)


def _offsets(resources: Iterable[Any]) -> Iterable[str]:
    for resource in resources:
        if not isinstance(resource, dict):
            continue
        for name in _TIME_FIELDS:
            value = resource.get(name)
            if isinstance(value, str) and (m := _OFFSET.search(value)):
                yield m.group(1)
        period = resource.get("effectivePeriod")
        if isinstance(period, dict) and isinstance(period.get("start"), str) and (
                m := _OFFSET.search(period["start"])):
            yield m.group(1)


def data_zone(resources: Iterable[Any]) -> tzinfo:
    """The most common UTC offset of the resources' own timestamps (ties: the first seen); UTC without any."""
    counts = Counter(_offsets(resources))
    if not counts:
        return UTC
    offset = counts.most_common(1)[0][0]
    if offset in ("Z", "+00:00", "-00:00"):
        return UTC
    sign = -1 if offset[0] == "-" else 1
    hours, minutes = int(offset[1:3]), int(offset[4:6])
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def card_style(time_zone: str | None, public_base_url: str, data: Mapping[str, Any]) -> CardStyle:
    """The style of one call: the configured zone, else the record's offset (``data``: key -> KeyData)."""
    if time_zone:
        zone: tzinfo = ZoneInfo(time_zone)
    else:
        zone = data_zone(r for key_data in data.values() for r in getattr(key_data, "resources", ()) or ())
    return CardStyle(zone=zone, trend_url=f"{public_base_url}/app/launch.html")
