"""Build step of the nms-cds wheel: ship the fixture scenarios inside the package.

``fhir_fixtures/scenarios/`` (written by ``fhir_fixtures/build_fixtures.py``) stays the source of truth in the
repository; a wheel gets a copy as ``cds_service/fixture_data/scenarios/`` so that ``nms-cds demo``, ``dev``
and ``load-fixtures`` work where only the wheel is installed (the Docker image). An editable install reads
the checkout's folder instead (``cds_service.devtools.fixtures.default_root``). Everything else is in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SOURCE = Path(__file__).resolve().parent / "fhir_fixtures" / "scenarios"
TARGET = Path("cds_service") / "fixture_data" / "scenarios"


class BuildPyWithFixtures(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        if not SOURCE.is_dir():
            raise SystemExit(f"setup.py: {SOURCE} is missing; the wheel would ship without fixtures")
        target = Path(self.build_lib) / TARGET
        shutil.rmtree(target, ignore_errors=True)
        for scenario in sorted(SOURCE.iterdir()):
            if (scenario / "expected.json").is_file():
                (target / scenario.name).mkdir(parents=True)
                for name in ("bundle.json", "request.json", "expected.json"):
                    shutil.copyfile(scenario / name, target / scenario.name / name)


setup(cmdclass={"build_py": BuildPyWithFixtures})
