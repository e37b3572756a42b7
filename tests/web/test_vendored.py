"""The vendored browser libraries (`make vendor`, VENDORED.md) are the files the table names, byte for byte,
each with its licence beside it, and the wheel carries the trend view's files."""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TABLE = REPO / "cds_service" / "web" / "static" / "app" / "vendor" / "VENDORED.md"
ROW = re.compile(r"^\| (\S+) \| (\S+) \| `([^`]+)` \| `([0-9a-f]{64})` \| (\S+) \| npm (\S+)@(\S+) (\S+) \|$")


def _rows() -> list[tuple[str, ...]]:
    rows = [m.groups() for line in TABLE.read_text(encoding="utf-8").splitlines() if (m := ROW.match(line))]
    assert rows, "VENDORED.md has no rows"
    return rows


def test_every_vendored_file_matches_its_sha256() -> None:
    for package, version, path, digest, _licence, npm_name, npm_version, _source in _rows():
        assert (package, version) == (npm_name, npm_version)
        data = (REPO / path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, f"{path} differs from VENDORED.md (run make vendor)"


def test_each_package_has_its_licence_and_the_pinned_versions() -> None:
    rows = _rows()
    versions = {package: version for package, version, *_ in rows}
    assert versions == {"fhirclient": "2.6.3", "uplot": "1.6.32", "marked": "18.2.1"}
    for package in versions:
        assert any(r[0] == package and r[2].endswith("LICENSE") for r in rows), package
    vendored = {p.name for p in TABLE.parent.iterdir()} - {"VENDORED.md"}
    assert vendored == {Path(r[2]).name for r in rows if r[2].startswith("cds_service/")}


def test_the_wheel_carries_the_trend_view() -> None:
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
        "package-data"]["cds_service"]
    base = REPO / "cds_service"
    carried = {p for pattern in patterns for p in base.glob(pattern) if p.is_file()}
    app = base / "web" / "static" / "app"
    assert {p for p in app.rglob("*") if p.is_file()} <= carried
