"""Card sizes as a clinician sees them: the detail's text after markdown rendering.

Rendering is markdown-it-py's CommonMark with GFM tables (markdown-it-py is in the development lock, through
rich); "rendered characters" are the characters of the resulting HTML's text, entities decoded, each run of
whitespace one space.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

from markdown_it import MarkdownIt

from cds_service.services.card_detail import PART_BREAK

_MD = MarkdownIt("commonmark").enable("table")


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in ("p", "li", "tr", "td", "th", "br", "hr"):
            self.parts.append(" ")


def rendered(markdown: str) -> str:
    """The text a reader sees of ``markdown``."""
    parser = _Text()
    parser.feed(_MD.render(markdown))
    parser.close()
    return re.sub(r"\s+", " ", "".join(parts for parts in parser.parts)).strip()


def first_part(detail: str) -> str:
    """The detail above the rule: what to do now and the decisive findings."""
    return detail.split(PART_BREAK, 1)[0]


def card_kind(card: dict[str, Any]) -> str:
    """The card's wording kind, from its summary and detail (as a reader would tell them apart)."""
    summary, detail = card["summary"], card.get("detail", "")
    if card["indicator"] == "info":
        return "incomplete"
    if summary.startswith("Previous NMS documented"):
        return "rechallenge"
    if "after a dopaminergic drug was stopped" in first_part(detail):
        return "withdrawal"
    return str(card["indicator"])
