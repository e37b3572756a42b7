"""The package's layering holds: the import-linter contracts in pyproject.toml ``[tool.importlinter]``.

``lint-imports`` checks every import of ``cds_service`` (function-level ones too) against the layers (command
line, developer tools, serving, app, web surface, runtime, services, CDS Hooks contract, FHIR, clinical
core), the pure clinical core, the developer tooling as a leaf, and no circle between the top-level modules.
The contract lets the command line import the developer commands; that ``nms-cds serve`` never does is checked
here at run time.
"""

from __future__ import annotations

import json
import pkgutil
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import cds_service
from tests.conftest import REPO


def _lint_imports() -> str:
    found = Path(sys.executable).with_name("lint-imports")
    command = str(found) if found.is_file() else shutil.which("lint-imports")
    assert command, "lint-imports not found: import-linter is in the dev extras (make install)"
    return command


def test_import_contracts_hold() -> None:
    result = subprocess.run([_lint_imports(), "--config", "pyproject.toml", "--no-cache"], cwd=REPO,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "0 broken" in result.stdout


def _contract(contract_id: str) -> dict[str, object]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    return next(c for c in config["contracts"] if c.get("id") == contract_id)


def test_the_clinical_core_contract_names_every_other_module() -> None:
    """A module added next to clinical/ is forbidden to it too: the forbidden list cannot fall behind."""
    siblings = {f"cds_service.{m.name}" for m in pkgutil.iter_modules(cds_service.__path__)} - {"cds_service.clinical"}
    assert siblings - set(_contract("clinical-pure")["forbidden_modules"]) == set()  # type: ignore[arg-type]


PROBE = """
import json, sys
from cds_service.app import create_app
from cds_service.config import Settings
from cds_service import cli
app = create_app(Settings(auth="off", environment="development", log_level="ERROR"))
try:
    client = app.test_client()
    client.get("/cds-services")
    client.get("/openapi.json")
    for sid, context in (("nms-patient-view", {}),
                         ("nms-order-select", {"selections": ["MedicationRequest/x"], "draftOrders": {}}),
                         ("nms-order-sign", {"draftOrders": {}})):
        hook = sid.removeprefix("nms-")
        body = {"hook": hook, "hookInstance": "h", "prefetch": {},
                "context": {"patientId": "p", "userId": "Practitioner/u", **context}}
        client.post("/cds-services/" + sid, json=body)
    cli.build_parser(dev=False).parse_args(["serve", "--port", "0"])
finally:
    app.extensions["nms_cds"].close()
print(json.dumps(sorted(m for m in sys.modules if m.startswith("cds_service"))))
"""


def test_serving_never_loads_the_developer_tooling() -> None:
    """The one import the contract allows into devtools (the command line's developer commands) is not taken
    by the app or by ``nms-cds serve``: checked in a fresh interpreter, so nothing imported earlier hides it."""
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert "cds_service.app" in loaded and "cds_service.services.engine" in loaded
    assert "cds_service.serve.gunicorn" in loaded
    assert [m for m in loaded if m.startswith("cds_service.devtools")] == []


def test_dev_commands_still_load_devtools() -> None:
    from cds_service import cli

    parser = cli.build_parser()
    args = parser.parse_args(["demo"])
    assert args.func.__module__ == "cds_service.devtools.tools"
