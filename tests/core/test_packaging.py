"""Pinned dependencies, the wheel and the image's recipe (issue 15), without Docker.

- the three lock files match pyproject.toml, pin every package with sha256 hashes, and ``scripts/lock.py
  check`` (run by ``make install``) names a requirement the locks do not satisfy;
- a wheel built from this checkout carries the fixture scenarios and, installed alone into an empty target,
  runs ``nms-cds demo`` with them;
- the Dockerfile installs from the locks, has no fixed-port HEALTHCHECK, and ``.dockerignore`` keeps the
  build context to a few MB (tests/system/test_docker.py builds and runs the image where a Docker engine exists).
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

from cds_service.devtools import fixtures
from tests.conftest import REPO

LOCKS = ("requirements.lock", "requirements-dev.lock", "requirements-build.lock")
CONTEXT_LIMIT_BYTES = 8 * 1024 * 1024
ABSENT = "nms-cds-test-not-a-dependency"  # a requirement no lock can hold


def lock_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nms_cds_lock", REPO / "scripts" / "lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- locks ------------------------------------------------------------------------------------------------

def test_locks_match_pyproject() -> None:
    assert lock_module().problems() == []


@pytest.mark.parametrize("name", LOCKS)
def test_every_pin_has_hashes(name: str) -> None:
    text = (REPO / name).read_text(encoding="utf-8")
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 3)[3])
    assert entries
    for entry in entries:
        assert re.match(r"^[A-Za-z0-9._-]+==\S+", entry), entry[:80]
        assert "--hash=sha256:" in entry, entry[:80]


def test_runtime_lock_agrees_with_the_dev_lock() -> None:
    lock = lock_module()
    runtime = lock.pins((REPO / "requirements.lock").read_text(encoding="utf-8"))
    dev = lock.pins((REPO / "requirements-dev.lock").read_text(encoding="utf-8"))
    assert runtime.items() <= dev.items()  # the image runs exactly what the tests ran
    assert "gunicorn" in runtime and "pytest" not in runtime


def test_a_mismatch_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock = lock_module()
    for name in (*LOCKS, "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)
    monkeypatch.setattr(lock, "ROOT", tmp_path)
    pyproject = tmp_path / "pyproject.toml"
    original = pyproject.read_text(encoding="utf-8")
    pyproject.write_text(original.replace('dependencies = [\n', f'dependencies = [\n    "{ABSENT}>=2",\n'
                                          '    "flask>=9",\n', 1), encoding="utf-8")
    flask = lock.pins((REPO / LOCKS[0]).read_text())["flask"]
    assert lock.problems() == [
        f"requirements.lock does not match pyproject.toml: {ABSENT}>=2 is not in it; run `make lock`",
        f"requirements.lock does not match pyproject.toml: it pins flask=={flask}, pyproject.toml asks for "
        "flask>=9; run `make lock`",
        f"requirements-dev.lock does not match pyproject.toml: {ABSENT}>=2 is not in it; run `make lock`",
        f"requirements-dev.lock does not match pyproject.toml: it pins flask=={flask}, pyproject.toml asks for "
        "flask>=9; run `make lock`",
    ]
    # a removed requirement is caught by the fingerprint
    pyproject.write_text(original.replace('    "requests>=2.32,<3",\n', "", 1), encoding="utf-8")
    assert lock.problems() == [
        "requirements.lock was made for other requirements than pyproject.toml's now (one was removed or its "
        "range changed); run `make lock`",
        "requirements-dev.lock was made for other requirements than pyproject.toml's now (one was removed or its "
        "range changed); run `make lock`",
    ]


def test_make_install_refuses_a_stale_lock(tmp_path: Path) -> None:
    for name in (*LOCKS, "pyproject.toml", "Makefile"):
        shutil.copy(REPO / name, tmp_path / name)
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "lock.py", tmp_path / "scripts" / "lock.py")
    pyproject = tmp_path / "pyproject.toml"
    text = pyproject.read_text().replace("dependencies = [\n", f'dependencies = [\n    "{ABSENT}>=5",\n', 1)
    pyproject.write_text(text)
    result = subprocess.run(["make", "--no-print-directory", "install", f"PYTHON={sys.executable}"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert f"make install: requirements.lock does not match pyproject.toml: {ABSENT}>=5 is not in it; run `make lock`" \
        in result.stderr
    assert not (tmp_path / ".venv").exists()  # nothing was installed


# --- the wheel -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    work = tmp_path_factory.mktemp("src") / "nms-cds"
    # build from a copy: the same files the image gets (.dockerignore), no build/ left in the checkout
    shutil.copytree(REPO, work, ignore=shutil.ignore_patterns(".git", ".venv", "node_modules", "build", "*.egg-info",
                                                               "__pycache__", ".*_cache", "datasets", "bench",
                                                               ".hypothesis", "var"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(out), str(work)], check=True, timeout=300, capture_output=True)
    [built] = out.glob("nms_cds-*.whl")
    return built


def test_wheel_carries_the_fixtures_and_the_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    scenarios = sorted(p.name for p in (REPO / "fhir_fixtures" / "scenarios").iterdir() if p.is_dir())
    assert len(scenarios) >= 20
    for scenario in scenarios:
        for part in ("bundle.json", "request.json", "expected.json"):
            assert f"cds_service/fixture_data/scenarios/{scenario}/{part}" in names
    data = [p.name for p in (REPO / "cds_service" / "clinical" / "data").iterdir() if p.is_file()]
    assert data and all(f"cds_service/clinical/data/{name}" in names for name in data)
    assert "cds_service/services/data/override-reasons.tsv" in names  # the override reasons offered on cards
    assert "cds_service/py.typed" in names
    app = [p.relative_to(REPO).as_posix() for p in (REPO / "cds_service" / "web" / "static").rglob("*") if p.is_file()]
    assert app and all(name in names for name in app)  # the trend view's pages and vendored libraries
    assert not any(n.startswith(("tests/", "fhir_fixtures/", "bench/", "datasets/")) for n in names)


def test_installed_wheel_runs_the_demo_from_its_own_fixtures(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target",
                    str(target), str(wheel)], check=True, timeout=300, capture_output=True)
    # -S: no site-packages, so neither this checkout's editable install nor its fhir_fixtures/ can be found;
    # the dependencies come from this venv's site-packages behind the installed wheel
    path = os.pathsep.join([str(target), sysconfig.get_paths()["purelib"]])
    code = ("import cds_service, sys; from cds_service.devtools import fixtures; print(cds_service.__file__); "
            "print(fixtures.FIXTURES_ROOT); from cds_service.cli import main; sys.exit(main(['demo']))")
    result = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": path, "PATH": os.environ.get("PATH", "")}, timeout=300)
    assert result.returncode == 0, result.stderr
    package, root, *verdicts = result.stdout.splitlines()
    assert package.startswith(str(target)) and root == str(target / "cds_service" / "fixture_data")
    assert sum(line.startswith("ok ") for line in verdicts) == len(fixtures.load_scenarios())


# --- the image's recipe --------------------------------------------------------------------------------------------

def test_dockerfile_installs_from_the_locks_and_checks_the_configured_port() -> None:
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert "pip install --require-hashes --no-deps -r requirements-build.lock" in dockerfile
    assert "--require-hashes --no-deps -r requirements.lock" in dockerfile
    assert "--no-build-isolation" in dockerfile and "pip check" in dockerfile
    healthcheck = next(line for line in dockerfile.splitlines() if line.startswith("HEALTHCHECK"))
    assert '["nms-cds", "healthcheck"]' in healthcheck and "8080" not in healthcheck
    entrypoint = next(line for line in dockerfile.splitlines() if line.startswith("ENTRYPOINT"))
    assert "--port" not in entrypoint  # NMS_CDS_PORT or `docker run IMAGE --port P`
    assert "USER 10001" in dockerfile


def dockerignore_context() -> list[Path]:
    """The files ``docker build`` would send: .dockerignore rules in order, the last match wins."""
    rules = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]

    def excluded(relative: str) -> bool:
        result = False
        parts = relative.split("/")
        for rule in rules:
            negate, pattern = rule.startswith("!"), rule.lstrip("!")
            prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
            if pattern.startswith("**/"):
                hit = any(fnmatch.fnmatch(p, pattern[3:]) for p in parts)
            else:
                hit = pattern == "**" or any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes)
            if hit:
                result = not negate
        return result

    files = []
    for path in REPO.rglob("*"):
        if path.is_file() and not excluded(path.relative_to(REPO).as_posix()):
            files.append(path)
    return files


def test_dockerignore_keeps_the_context_small() -> None:
    files = dockerignore_context()
    names = {p.relative_to(REPO).as_posix() for p in files}
    assert {"pyproject.toml", "setup.py", "requirements.lock", "requirements-build.lock", "cds_service/cli.py",
            "fhir_fixtures/scenarios/classic-nms/bundle.json"} <= names
    for part in (".venv/", "node_modules/", ".git/", "__pycache__/", ".mypy_cache/", "datasets/", "tests/"):
        assert not any(part in "/" + n + "/" or n.startswith(part) for n in names), part
    size = sum(p.stat().st_size for p in files)
    assert size < CONTEXT_LIMIT_BYTES, f"{size / 1e6:.1f} MB"
    # everything the Dockerfile copies is in the context
    copies = re.findall(r"^COPY (?!--from)(.+?) \S+$", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    for source in " ".join(copies).split():
        assert any(n == source or n.startswith(source + "/") for n in names), source
