"""Lock files of nms-cds: are they in step with pyproject.toml? (``make install`` runs ``check`` first.)

    python3 scripts/lock.py check   # exit 1 with one line per mismatch, naming the fix (make lock)
    python3 scripts/lock.py stamp   # after uv wrote the locks: record the fingerprint of pyproject's requirements
    python3 scripts/lock.py build-requires   # [build-system] requires, one per line (input of make lock)

Three locks, each with sha256 hashes for every file, written by ``make lock`` (uv pip compile --universal):

- ``requirements.lock``        the service's runtime dependencies (the Docker image installs only these)
- ``requirements-dev.lock``    runtime + the ``dev`` extra (``make install``, CI)
- ``requirements-build.lock``  ``[build-system] requires`` (building the wheel in the image without network)

``check`` compares each lock with pyproject.toml twice: every requirement must be pinned in the lock at a
version it allows (names the requirement that is missing or out of range), and the fingerprint recorded by
``stamp`` must equal pyproject's requirements now (catches removed or loosened ones). Standard library only,
plus ``packaging`` (pip's vendored copy when it is not installed).
"""

from __future__ import annotations

import hashlib
import re
import sys
import tomllib
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # a bare interpreter: pip always carries a copy
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
FINGERPRINT = "# pyproject.toml requirements sha256: "
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def requirements() -> dict[str, list[str]]:
    """What each lock must satisfy, from pyproject.toml."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    runtime = list(data["project"].get("dependencies", []))
    dev = list(data["project"].get("optional-dependencies", {}).get("dev", []))
    build = list(data.get("build-system", {}).get("requires", []))
    return {"requirements.lock": runtime, "requirements-dev.lock": runtime + dev, "requirements-build.lock": build}


def fingerprint(reqs: list[str]) -> str:
    normal = sorted(str(Requirement(r)) for r in reqs)
    return hashlib.sha256("\n".join(normal).encode()).hexdigest()


def pins(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        match = PIN.match(line)
        if match:
            found[canonicalize_name(match.group(1))] = match.group(2)
    return found


def problems() -> list[str]:
    out = []
    for name, reqs in requirements().items():
        path = ROOT / name
        if not path.is_file():
            out.append(f"{name} is missing; run `make lock`")
            continue
        text = path.read_text(encoding="utf-8")
        pinned = pins(text)
        before = len(out)
        for raw in reqs:
            req = Requirement(raw)
            if req.marker is not None and not req.marker.evaluate():
                continue
            version = pinned.get(canonicalize_name(req.name))
            if version is None:
                out.append(f"{name} does not match pyproject.toml: {req} is not in it; run `make lock`")
            elif req.specifier and not req.specifier.contains(version, prereleases=True):
                out.append(f"{name} does not match pyproject.toml: it pins {req.name}=={version}, "
                           f"pyproject.toml asks for {req}; run `make lock`")
        recorded = next((line[len(FINGERPRINT):].strip() for line in text.splitlines()
                         if line.startswith(FINGERPRINT)), None)
        if len(out) == before and recorded != fingerprint(reqs):
            out.append(f"{name} was made for other requirements than pyproject.toml's now "
                       "(one was removed or its range changed); run `make lock`")
    return out


def stamp() -> None:
    for name, reqs in requirements().items():
        path = ROOT / name
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith(FINGERPRINT)]
        at = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
        lines.insert(at, FINGERPRINT + fingerprint(reqs))
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str]) -> int:
    if argv == ["build-requires"]:
        print("\n".join(requirements()["requirements-build.lock"]))
        return 0
    if argv == ["stamp"]:
        stamp()
        return 0
    if argv == ["check"]:
        found = problems()
        for line in found:
            print(f"make install: {line}", file=sys.stderr)
        return 1 if found else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
