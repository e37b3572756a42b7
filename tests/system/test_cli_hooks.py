"""``nms-cds call --hook ...`` against a real HTTP server (werkzeug, loopback, port 0) and ``nms-cds demo``:
the three hooks from the command line."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from cds_service import cli
from cds_service.app import create_app
from cds_service.devtools import fixtures
from tests.conftest import make_settings


@pytest.fixture(scope="module")
def service() -> Iterator[str]:
    app = create_app(make_settings(fixed_now=fixtures.ANCHOR, log_level="WARNING"))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        app.extensions["nms_cds"].close()


@pytest.mark.parametrize(("hook", "scenario", "expected"), [
    ("patient-view", "classic-nms", "[CRITICAL] Possible NMS: haloperidol"),
    ("order-select", "classic-nms", "[CRITICAL] Possible NMS: haloperidol"),
    ("order-sign", "classic-nms", "[CRITICAL] Possible NMS: haloperidol"),
    ("patient-view", "past-nms-rechallenge", "no cards"),
    ("order-select", "past-nms-rechallenge", "[WARNING] Previous NMS documented"),
])
def test_call_fires_each_hook(service: str, capsys: pytest.CaptureFixture[str], hook: str, scenario: str,
                              expected: str) -> None:
    request = fixtures.FIXTURES_ROOT / "scenarios" / scenario / "request.json"
    code = cli.main(["call", "--service", service, "--hook", hook, "--request", str(request), "--no-rebase"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith(expected)
    assert f"discovered nms-{hook} ({hook})" in err
    if hook == "patient-view" and "CRITICAL" in out:
        assert "update MedicationRequest" in out and "delete" not in out


def test_call_json_output_and_usage_errors(service: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    request = fixtures.FIXTURES_ROOT / "scenarios" / "classic-nms" / "request.json"
    assert cli.main(["call", "--service", service, "--hook", "order-select", "--request", str(request),
                     "--no-rebase", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["cards"][0]["indicator"] == "critical"
    assert cli.main(["call", "--service", service, "--hook", "order-select", "--patient", "p1"]) == 2
    assert "--draft" in capsys.readouterr().err
    # patient-view needs no draft; without prefetch or fhirServer the service answers 412
    assert cli.main(["call", "--service", service, "--hook", "patient-view", "--patient", "p1"]) == 1
    assert "412" in capsys.readouterr().err


def test_demo_checks_every_hook(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert all(hook in header for hook in fixtures.HOOKS)
    lines = [line for line in out.splitlines() if line.startswith(("ok ", "BAD"))]
    assert len(lines) == len(fixtures.load_scenarios()) and all(line.startswith("ok ") for line in lines)
