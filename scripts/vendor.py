"""`make vendor`: fetch the trend view's browser libraries from the npm registry (``npm pack``) into a temporary
folder, copy their built browser files and LICENSE files into the repository, and write VENDORED.md (package,
version, file, sha256, license, npm source). tests/web/test_vendored.py checks every sha256, so the repository
works from a fresh clone without network and a changed file is noticed.

Usage: python scripts/vendor.py            (refresh the files and VENDORED.md)
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
APP_VENDOR = REPO / "cds_service" / "web" / "static" / "app" / "vendor"
TEST_VENDOR = REPO / "tests" / "web" / "vendor"
TABLE = APP_VENDOR / "VENDORED.md"

#: (package, version, license, [(file in the package, destination)])
PACKAGES = [
    ("fhirclient", "2.6.3", "Apache-2.0", [
        ("package/build/fhir-client.pure.min.js", APP_VENDOR / "fhir-client.pure.min.js"),
        ("package/build/fhir-client.pure.min.js.LICENSE.txt", APP_VENDOR / "fhir-client.pure.min.js.LICENSE.txt"),
        ("package/LICENSE", APP_VENDOR / "fhirclient.LICENSE"),
    ]),
    ("uplot", "1.6.32", "MIT", [
        ("package/dist/uPlot.iife.min.js", APP_VENDOR / "uPlot.iife.min.js"),
        ("package/dist/uPlot.min.css", APP_VENDOR / "uPlot.min.css"),
        ("package/LICENSE", APP_VENDOR / "uplot.LICENSE"),
    ]),
    # tests only: renders a card's markdown in the browser as an EHR does (tests/web/test_trend_browser.py)
    ("marked", "18.2.1", "MIT", [
        ("package/lib/marked.umd.js", TEST_VENDOR / "marked.umd.js"),
        ("package/LICENSE", TEST_VENDOR / "marked.LICENSE"),
    ]),
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    rows = []
    with tempfile.TemporaryDirectory(prefix="nms-cds-vendor-") as tmp:
        for name, version, licence, files in PACKAGES:
            out = subprocess.run(["npm", "pack", f"{name}@{version}", "--silent", "--pack-destination", tmp],
                                 check=True, capture_output=True, text=True, timeout=300).stdout.split()
            with tarfile.open(Path(tmp) / out[-1]) as tar:
                tar.extractall(Path(tmp) / name, filter="data")
            for source, target in files:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(Path(tmp) / name / source, target)
                rows.append((name, version, target.relative_to(REPO).as_posix(), sha256(target), licence,
                             f"npm {name}@{version} {source.removeprefix('package/')}"))
    lines = ["# Vendored browser libraries", "",
             "Written by `make vendor` (scripts/vendor.py) from the npm registry; tests/web/test_vendored.py checks",
             "every sha256. The files are the packages' own built browser bundles, unchanged.", "",
             "| package | version | file | sha256 | license | npm source |", "|---|---|---|---|---|---|"]
    lines += [f"| {p} | {v} | `{f}` | `{h}` | {lic} | {src} |" for p, v, f, h, lic, src in rows]
    TABLE.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{len(rows)} files vendored; {TABLE.relative_to(REPO)} written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
