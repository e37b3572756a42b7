"""The one place where text from a request or a FHIR server is made safe for a card.

Cards carry markdown (``detail``) and plain text (``summary``, labels, descriptions) that EHRs render, some as
HTML. Every string that did not come from this service (drug text, status tokens, Condition text, units,
display names, ids) goes through :func:`md` (markdown) or :func:`plain` (plain text) before it is put in a
card:

- control, format and line/paragraph separator characters and every run of whitespace become one space, so
  no newline can start a heading, list, table row or block;
- NFKC folds full-width and other compatibility look-alikes (``＜script＞``) into the characters they mimic,
  which are then handled like any other;
- ``md``: ``& < > "`` become HTML entities (no tag, ``<script>`` or ``<img onerror>``, can form) and every
  markdown punctuation character is backslash-escaped (no link, image, emphasis, code span, table cell or
  heading; parentheses are harmless without brackets); ``plain``: ``<`` and ``>`` are dropped and ``](`` /
  ``![`` are split, so a renderer that treats the field as markdown finds no tag, link or image either;
- ``://`` and ``www.`` get a zero-width space so that no autolink (a tracking image or a link to another site)
  forms; ``javascript:`` cannot become a link without the link syntax escaped above;
- the text is cut to ``limit`` characters (with "…").
"""

from __future__ import annotations

import re
import unicodedata

_BREAKS = re.compile(r"[\s\u0000-\u001f\u007f-\u009f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]+")
_AUTOLINK = re.compile(r"(?i)(://|www\.)")
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]#!|~])")
_LINE_START = re.compile(r"^([-+>=]|\d+[.)])")  # list, quote or setext marker if the text ever starts a line
_ZWSP = "\u200b"


def _reduce(text: object, limit: int) -> str:
    value = unicodedata.normalize("NFKC", str(text))
    value = "".join(" " if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch for ch in value)
    value = _BREAKS.sub(" ", value).strip()
    if len(value) > limit:
        value = value[: limit - 1].rstrip() + "…"
    return value


def _defuse_links(value: str) -> str:
    return _AUTOLINK.sub(lambda m: m.group(1)[0] + _ZWSP + m.group(1)[1:], value)


def md(text: object, limit: int = 160) -> str:
    """Foreign text for a markdown field: one line, no HTML, no markdown syntax, no autolink."""
    value = _reduce(text, limit)
    value = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    value = _LINE_START.sub(lambda m: m.group(1)[:-1] + "\\" + m.group(1)[-1], _MD_SPECIAL.sub(r"\\\1", value))
    return _defuse_links(value)


def plain(text: object, limit: int = 120) -> str:
    """Foreign text for a plain-text field (summary, label, description): one line, no tags, no autolink."""
    value = _reduce(text, limit).replace("<", " ").replace(">", " ").replace("](", "] (").replace("![", "! [")
    return _defuse_links(re.sub(r" {2,}", " ", value).strip())


def ref(value: object) -> str:
    """A resource reference for a code span: only the characters of ``Type/id``."""
    return re.sub(r"[^A-Za-z0-9/._-]", "", str(value))[:140]
