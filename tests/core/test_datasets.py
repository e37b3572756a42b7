"""The third-party test data in datasets/ is complete, unchanged and licensed (datasets/MANIFEST.tsv)."""

from __future__ import annotations

import csv
import hashlib
import pathlib
import re

from tests.conftest import DATASETS, REPO

COLUMNS = ["file", "bytes", "sha256", "source_repo", "source_commit", "source_path", "license", "note"]


def _manifest() -> list[dict[str, str]]:
    with (DATASETS / "MANIFEST.tsv").open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        assert reader.fieldnames == COLUMNS
        return list(reader)


def test_every_file_listed_and_unchanged() -> None:
    rows = _manifest()
    listed = {row["file"] for row in rows}
    present = {str(p.relative_to(DATASETS)) for p in DATASETS.rglob("*")
               if p.is_file() and p.name not in ("MANIFEST.tsv", "README.md")}
    assert present == listed
    for row in rows:
        data = (DATASETS / row["file"]).read_bytes()
        assert len(data) == int(row["bytes"]), row["file"]
        assert hashlib.sha256(data).hexdigest() == row["sha256"], row["file"]
        assert row["license"] and row["source_repo"] and len(row["source_commit"]) == 40, row["file"]
    assert len(rows) == 98


def test_nothing_refers_outside_the_repository() -> None:
    """No tracked file reads or links the reference library that sits beside the repository in development."""
    pattern = re.compile(r"\.\./shared|(^|[^a-z_])shared/(datasets|reference|seed)|nms-clinical\.md")
    skip_dirs = {".git", ".venv", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache",
                 ".hypothesis", "build", "dist", "var"}
    found = []
    for path in REPO.rglob("*"):
        rel = path.relative_to(REPO)
        if not path.is_file() or skip_dirs.intersection(rel.parts) or rel.parts[0] == "datasets" \
                or any(part.endswith(".egg-info") for part in rel.parts) \
                or rel == pathlib.Path(__file__).relative_to(REPO) or rel.suffix in (".png", ".pyc"):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if pattern.search(line):
                found.append(f"{rel}:{number}: {line[:120]}")
    assert not found, "references outside the repository:\n" + "\n".join(found)
