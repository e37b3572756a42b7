"""No cross-talk under concurrency: 50 simultaneous calls of the three hooks for different patients against a real
gunicorn server (``nms-cds serve``, 2 workers × 8 threads, the gthread worker) on a free loopback port.

Two local FHIR servers hold every fixture scenario: one healthy, one with 200 ms of latency on every
request. The 50 calls mix the fixture requests with prefetch, no-prefetch calls against each server, and
no-prefetch calls whose AllergyIntolerance query trickles (``slow`` fault) until the hook budget runs out.

Every answer must belong to its own request: byte-for-byte the answer the same request gets when sent
alone (computed before the burst) with only the hookInstance-derived uuids changed (order-sign; the other
two hooks derive card uuids from the evidence, so their answers are identical), card uuids derived from
its own hookInstance (order-sign), its own X-Request-Id echoed, and no other patient's id anywhere in it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from cds_service.devtools import fixtures, localfhir
from cds_service.serve.front import nginx_binary
from cds_service.services.cards import card_uuid
from tests.conftest import REPO, free_port, require_local_fhir, start_group, stop_group

pytestmark = pytest.mark.integration

require_local_fhir()

CALLS = 50
WORKERS, THREADS = 2, 8
# The hook budget: generous, since a call makes 9 FHIR queries (7 before issue 11) and a key that misses the
# budget on a loaded 2-core machine changes the answer (an incomplete check): this test is about cross-talk.
BUDGET = 8.0
SCENARIOS = fixtures.load_scenarios()
KINDS = ("nms:critical", "nms:warning", "nms:info", "suggestion:remove-draft", "suggestion:order-labs")
MODES = ("prefetch", "prefetch", "fhir", "fhir-latency", "fhir-slow-allergies")
HOOKS = fixtures.HOOKS


@dataclass
class Servers:
    fast: localfhir.LocalFhirServer
    latency: localfhir.LocalFhirServer
    service: str


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    root = fixtures.FIXTURES_ROOT / "scenarios"
    log = tmp_path_factory.mktemp("concurrency") / "gunicorn.log"
    with localfhir.LocalFhirServer(load=[root], quiet=True) as fast, \
            localfhir.LocalFhirServer(load=[root], latency_ms=200, quiet=True) as latency:
        port = free_port()
        env = {
            **os.environ,
            "NMS_CDS_ENVIRONMENT": "production",
            "NMS_CDS_AUTH": "off",  # loopback only; JWT is covered by the security tests
            "NMS_CDS_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
            "NMS_CDS_FHIR_ALLOWLIST": f"{fast.origin},{latency.origin}",
            "NMS_CDS_FIXED_NOW": fixtures.ANCHOR.isoformat(),
            "NMS_CDS_HOOK_BUDGET_SECONDS": str(BUDGET),
            # one FHIR query pool per worker is shared by its THREADS requests (9 queries each)
            "NMS_CDS_FHIR_CONCURRENCY": str(9 * THREADS),
            "NMS_CDS_LOG_LEVEL": "WARNING",
            # its own store: the process-wide default data directory is shared with other tests of this worker
            "NMS_CDS_DATA_DIR": str(tmp_path_factory.mktemp("concurrency-data")),
            **({} if nginx_binary() else {"NMS_CDS_FRONT": "none"}),  # this test is not about the front
        }
        nms_cds = str(Path(sys.executable).with_name("nms-cds"))
        with log.open("wb") as out:
            proc = start_group(
                [nms_cds, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(WORKERS),
                 "--threads", str(THREADS)],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
            )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"gunicorn did not start:\n{log.read_text(errors='replace')[-3000:]}")
                time.sleep(0.1)
            yield Servers(fast, latency, base)
        finally:
            stop_group(proc, signal.SIGTERM)  # gunicorn master and its workers: our own process group
        errors = [line for line in log.read_text(errors="replace").splitlines() if '"level":"error"' in line]
        assert not errors, "\n".join(errors[:10])


def build_request(scenario: fixtures.Scenario, mode: str, servers: Servers, hook: str = "order-sign"
                  ) -> dict[str, Any]:
    body: dict[str, Any] = scenario.request_for(hook)
    body["hookInstance"] = str(uuid.uuid4())
    if mode != "prefetch":
        body.pop("prefetch")
        body["fhirServer"] = {
            "fhir": servers.fast.base_url,
            "fhir-latency": servers.latency.base_url,
            "fhir-slow-allergies": servers.fast.fault_url("slow", "AllergyIntolerance"),
        }[mode]
    return body


def send(servers: Servers, body: dict[str, Any], request_id: str) -> tuple[int, str, str]:
    response = requests.post(f"{servers.service}/cds-services/nms-{body['hook']}", json=body, timeout=60,
                             headers={"X-Request-Id": request_id})
    return response.status_code, response.headers.get("X-Request-Id", ""), response.text


def normalised(text: str, hook_instance: str) -> str:
    """The answer with its hookInstance-derived uuids replaced by their kind, for comparison."""
    for kind in KINDS:
        text = text.replace(card_uuid(hook_instance, kind), f"<{kind}>")
    return text


def test_fifty_concurrent_calls_never_cross_talk(servers: Servers) -> None:
    plan = [(SCENARIOS[i % len(SCENARIOS)], MODES[(i // len(SCENARIOS) + i) % len(MODES)], HOOKS[i % len(HOOKS)])
            for i in range(CALLS)]
    assert {mode for _, mode, _ in plan} == set(MODES) and {hook for *_, hook in plan} == set(HOOKS)

    # references: each distinct (scenario, mode, hook) sent alone; the slow-fault ones together (each waits
    # the budget)
    references: dict[tuple[str, str, str], str] = {}
    pairs = sorted({(s.id, mode, hook) for s, mode, hook in plan})
    by_id = {s.id: s for s in SCENARIOS}

    def reference(pair: tuple[str, str, str]) -> None:
        body = build_request(by_id[pair[0]], pair[1], servers, pair[2])
        status, _, text = send(servers, body, f"ref-{pair[0]}-{pair[1]}-{pair[2]}")
        assert status == 200, (pair, status, text[:300])
        references[pair] = normalised(text, body["hookInstance"])

    for pair in pairs:
        if pair[1] != "fhir-slow-allergies":
            reference(pair)
    with ThreadPoolExecutor(max_workers=len(pairs)) as pool:
        list(pool.map(reference, [p for p in pairs if p[1] == "fhir-slow-allergies"]))

    # the burst: all 50 released at once
    bodies = [build_request(scenario, mode, servers, hook) for scenario, mode, hook in plan]
    barrier = threading.Barrier(CALLS)

    def burst(i: int) -> tuple[int, str, str, float]:
        barrier.wait(timeout=30)
        started = time.perf_counter()
        status, echoed, text = send(servers, bodies[i], f"burst-{i}")
        return status, echoed, text, time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=CALLS) as pool:
        answers = list(pool.map(burst, range(CALLS)))
    wall = time.perf_counter() - started

    patients = {s.patient_id for s in SCENARIOS}
    for i, ((scenario, mode, hook), body, (status, echoed, text, _)) in enumerate(
            zip(plan, bodies, answers, strict=True)):
        where = f"call {i} ({scenario.id}, {mode}, {hook})"
        assert status == 200, f"{where}: {status} {text[:300]}"
        assert echoed == f"burst-{i}", f"{where}: X-Request-Id {echoed!r}"
        answer = json.loads(text)
        hook_instance = body["hookInstance"]
        for card in answer["cards"]:
            if hook == "order-sign":
                assert card["uuid"] == card_uuid(hook_instance, f"nms:{card['indicator']}"), where
            for suggestion in card.get("suggestions", []):
                if hook == "order-sign":
                    assert suggestion["uuid"] in {card_uuid(hook_instance, k) for k in KINDS}, where
                for action in suggestion["actions"]:
                    if action["type"] in ("create", "update"):
                        assert action["resource"]["subject"]["reference"] == f"Patient/{scenario.patient_id}"
                    else:
                        assert action["resourceId"].startswith(f"MedicationRequest/{scenario.id}-"), where
        for other in patients - {scenario.patient_id}:
            assert other not in text, f"{where}: mentions {other}"
        for drug in scenario.expected.get("drugs", []) if hook == "order-sign" else []:  # the drafts' drugs too
            assert drug in text, f"{where}: does not name {drug}"
        assert normalised(text, hook_instance) == references[(scenario.id, mode, hook)], \
            f"{where}: differs when concurrent"

    slowest = max(seconds for *_, seconds in answers)
    assert slowest < BUDGET + 10, f"slowest answer {slowest:.1f} s"
    print(f"\n{CALLS} concurrent calls: wall {wall:.2f} s, slowest answer {slowest:.2f} s")

