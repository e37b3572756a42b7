"""The README and docs/ stay navigable: every relative link resolves to a file of the checkout and every
``#anchor`` to a heading of its target (GitHub's slug rules); the README stays a front page; no internal issue
numbers; the benchmark's generated block keeps its markers."""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

from tests.conftest import REPO

ROOT = REPO
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
# [text](target) and ![alt](target); a target ends at whitespace or the closing parenthesis
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans (links there are not links)."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            out.append("")
            continue
        out.append("" if fenced else re.sub(r"`[^`]*`", "", line))
    return "\n".join(out)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.replace("`", "").replace("*", "")
    text = unicodedata.normalize("NFC", text).lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found: set[str] = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if m:
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path) -> list[str]:
    return LINK.findall(_prose(path.read_text(encoding="utf-8")))


def test_the_slug_follows_githubs_rules() -> None:
    assert slug("Production set-up: PostgreSQL + Redis") == "production-set-up-postgresql--redis"
    assert slug("3.1 Trusting the CDS Hooks reference sandbox") == "31-trusting-the-cds-hooks-reference-sandbox"
    assert slug("Override analytics: `nms-cds report`") == "override-analytics-nms-cds-report"
    assert slug("Alert burden (`make burden`)") == "alert-burden-make-burden"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc: Path) -> None:
    broken = []
    for target in links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
            continue  # http:, https:, mailto:
        file_part, _, anchor = target.partition("#")
        dest = doc if not file_part else (doc.parent / file_part).resolve()
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif not dest.is_relative_to(ROOT):
            broken.append(f"{target}: outside the repository")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_readme_is_a_front_page_with_a_docs_index() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 150
    for doc in sorted((ROOT / "docs").glob("*.md")):
        assert f"](docs/{doc.name})" in readme, f"docs/{doc.name} is missing from the README's index"
    for command in ("make run", "make test"):
        assert f"\n{command}" in readme


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_internal_issue_numbers(doc: Path) -> None:
    found = re.findall(r"\bissues? #?\d+", doc.read_text(encoding="utf-8"), re.IGNORECASE)
    assert not found, f"{doc.relative_to(ROOT)} cites {found}: say what was meant instead"


def test_the_benchmark_block_has_its_markers_once() -> None:
    text = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    source = (ROOT / "bench" / "run_bench.py").read_text(encoding="utf-8")
    start = re.search(r'^README_START = "(.*)"$', source, re.MULTILINE)
    end = re.search(r'^README_END = "(.*)"$', source, re.MULTILINE)
    assert start and end
    assert text.count(start.group(1)) == 1 and text.count(end.group(1)) == 1
    assert text.index(start.group(1)) < text.index(end.group(1))
    assert 'ROOT / "docs" / "performance.md"' in source
