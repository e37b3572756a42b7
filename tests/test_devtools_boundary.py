"""Production code never imports the developer tooling (``cds_service.devtools``).

Checked in a fresh interpreter, so that nothing the test process already imported hides an import:
building the app, serving one request of each hook, and the ``serve`` command's parser.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

PROBE = """
import json, sys
from cds_service.app import create_app
from cds_service.config import Settings
from cds_service import cli
app = create_app(Settings(auth="off", environment="development", log_level="ERROR"))
client = app.test_client()
client.get("/cds-services")
client.get("/openapi.json")
for sid, context in (("nms-patient-view", {}),
                     ("nms-order-select", {"selections": ["MedicationRequest/x"], "draftOrders": {}}),
                     ("nms-order-sign", {"draftOrders": {}})):
    hook = sid.removeprefix("nms-")
    body = {"hook": hook, "hookInstance": "h", "context": {"patientId": "p", "userId": "Practitioner/u", **context},
            "prefetch": {}}
    client.post("/cds-services/" + sid, json=body)
cli.build_parser(dev=False).parse_args(["serve", "--port", "0"])
print(json.dumps(sorted(m for m in sys.modules if m.startswith("cds_service"))))
"""


def test_production_modules_do_not_import_devtools() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert "cds_service.app" in loaded and "cds_service.services.engine" in loaded
    assert [m for m in loaded if m.startswith("cds_service.devtools")] == []


def test_dev_commands_still_load_devtools() -> None:
    from cds_service import cli

    parser = cli.build_parser()
    args = parser.parse_args(["demo"])
    assert args.func.__module__ == "cds_service.devtools.tools"
