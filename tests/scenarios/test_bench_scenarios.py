"""The benchmark's scenario generators, and the fast paths the benchmark led to.

- ``bench/scenarios.py`` is deterministic, builds what its docstring promises, and the service's answer on
  the generated scenario-1 request is the expected critical card (the same on the long record, and for the
  patient-view and order-select variants, whose requests follow the service's wire models);
- ``bench/run_bench.py``'s targets are met or not on unrounded figures; the floor decodes as the service does;
- the plain-JSON paths of ``cds_service.fhir.plain_json`` give exactly the records the R4B-model paths give,
  on every fixture resource and on seeded mutations of them;
- ``load_json``'s C-speed depth check answers exactly like the original order of checks.
"""

from __future__ import annotations

import copy
import gc
import json
import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from bench import scenarios
from cds_service.config import Settings
from cds_service.devtools import fixtures
from cds_service.errors import BadRequest
from cds_service.fhir import extract, plain_json
from cds_service.fhir import medications as fhir_medications
from cds_service.fhir import observations as fhir_observations
from cds_service.protocol.decode import json_depth, load_json
from cds_service.services.templates import prefetch_templates
from tests.conftest import make_settings


@pytest.fixture
def settings() -> Settings:
    return make_settings(fixed_now=fixtures.ANCHOR)


# --- generators --------------------------------------------------------------------------------------


def test_generators_are_deterministic() -> None:
    for hook in scenarios.HOOKS:
        assert scenarios.dumps(scenarios.admission_request(hook)) == scenarios.dumps(scenarios.admission_request(hook))
    assert scenarios.dumps(scenarios.long_record_request(1_500)) == scenarios.dumps(
        scenarios.long_record_request(1_500))
    assert scenarios.dumps(scenarios.transaction_bundle()) == scenarios.dumps(scenarios.transaction_bundle())
    assert scenarios.dumps(scenarios.fhir_server_request("http://127.0.0.1:1/fhir")) == scenarios.dumps(
        scenarios.fhir_server_request("http://127.0.0.1:1/fhir"))


def test_the_admission_is_a_realistic_seven_day_record() -> None:
    resources = scenarios.admission_resources()
    kinds = Counter(r["resourceType"] for r in resources)
    assert kinds == {"Observation": 203, "MedicationRequest": 10, "Patient": 1}
    assert 190 <= len(resources) <= 230  # "~200 resources"
    temperatures = [r for r in resources if r["resourceType"] == "Observation"
                    and r["code"]["coding"][0]["code"] == "8310-5"]
    assert len(temperatures) == 7 * 24 // 4  # vital signs every 4 h for 7 days
    request = scenarios.admission_request()
    assert set(request["prefetch"]) == set(prefetch_templates())
    counts = scenarios.count_resources(request)
    assert counts["medications"] == 10 and counts["temperature"] == 42 and counts["draftOrders"] == 1
    assert counts["vitals"] + counts["labs"] + counts["temperature"] == 203
    draft = request["context"]["draftOrders"]["entry"][0]["resource"]
    assert draft["status"] == "draft" and draft["medicationCodeableConcept"]["coding"][0]["code"] == "204416"


@pytest.mark.parametrize("total", [1_000, 2_500])
def test_the_long_record_keeps_the_relevant_observations_constant(total: int) -> None:
    request = scenarios.long_record_request(total)
    observations = [e["resource"] for key in ("temperature", "vitals", "labs")
                    for e in request["prefetch"][key].get("entry", [])]
    assert len(observations) == total
    assert len({o["id"] for o in observations}) == total  # every Observation once
    wanted = fhir_observations.relevant_loinc()
    relevant = [o for o in observations if {c["code"] for c in o["code"]["coding"]} & wanted]
    assert len(relevant) == 203
    assert len({o["code"]["coding"][0]["code"] for o in observations}) > 30  # many codes
    assert not {row[0] for row in scenarios.filler_catalogue()} & wanted


def test_the_fhir_server_scenario_has_no_prefetch() -> None:
    request = scenarios.fhir_server_request("http://127.0.0.1:9/fhir")
    assert "prefetch" not in request and request["fhirServer"] == "http://127.0.0.1:9/fhir"
    bundle = scenarios.transaction_bundle()
    assert bundle["type"] == "transaction" and len(bundle["entry"]) == len(scenarios.admission_resources())
    assert all(e["request"]["method"] == "PUT" for e in bundle["entry"])


# --- the clinical answer on the generated requests ---------------------------------------------------


def _card(client: FlaskClient, request: dict[str, Any]) -> dict[str, Any]:
    url = f"/cds-services/{scenarios.HOOKS[request['hook']]}"
    response = client.post(url, data=scenarios.dumps(request), content_type="application/json")
    assert response.status_code == 200, response.get_data(as_text=True)
    (card,) = response.get_json()["cards"]
    result: dict[str, Any] = card
    return result


def test_scenario_1_answers_the_expected_critical_card(client: FlaskClient) -> None:
    card = _card(client, scenarios.admission_request())
    assert card["indicator"] == "critical"
    assert card["summary"].startswith("Possible NMS: haloperidol + T 39.5 °C ×3 + CK 9,400 U/L (47×ULN)")
    assert "**63 of 63**" in card["detail"]  # all five data-derived IEC criteria
    labels = [s["label"] for s in card.get("suggestions", [])]
    assert "Remove the draft haloperidol order" in labels


def test_the_other_hooks_requests_follow_the_wire_shape() -> None:
    """Scenario 1's variants: patient-view has no draft; order-select names the draft in ``selections``;
    every hook's prefetch is filled from that hook's own templates."""
    from cds_service.protocol.models import REQUEST_MODELS

    for hook in scenarios.HOOKS:
        request = scenarios.admission_request(hook)
        REQUEST_MODELS[hook].model_validate(request)  # the service's own wire model accepts it
        assert request["hook"] == hook
        assert set(request["prefetch"]) == set(scenarios.hook_templates(hook))
        assert scenarios.count_resources(request)["temperature"] == 42
    view = scenarios.admission_request("patient-view")["context"]
    assert set(view) == {"userId", "patientId", "encounterId"}
    select = scenarios.admission_request("order-select")["context"]
    draft = select["draftOrders"]["entry"][0]["resource"]
    assert draft == scenarios.draft_order()
    assert select["selections"] == [f"MedicationRequest/{draft['id']}"]
    instances = {scenarios.admission_request(h)["hookInstance"] for h in scenarios.HOOKS}
    assert len(instances) == 3
    defaults = make_settings()
    expected = {"order-sign": defaults.service_id, "patient-view": defaults.patient_view_service_id,
                "order-select": defaults.order_select_service_id}
    assert expected == scenarios.HOOKS


@pytest.mark.parametrize("hook", ["patient-view", "order-select"])
def test_the_other_hooks_answer_the_same_critical_card(client: FlaskClient, hook: str) -> None:
    sign = _card(client, scenarios.admission_request())
    card = _card(client, scenarios.admission_request(hook))
    assert card["indicator"] == "critical"
    assert card["summary"] == sign["summary"]
    assert card["summary"].startswith("Possible NMS: haloperidol + T 39.5 °C ×3 + CK 9,400 U/L (47×ULN)")
    assert "**63 of 63**" in card["detail"]
    labels = [s["label"] for s in card.get("suggestions", [])]
    if hook == "order-select":  # the selected draft is the new exposure
        assert "Remove the draft haloperidol order" in labels
    else:  # the chart: the active IM order, never a draft
        assert "Remove the draft haloperidol order" not in labels
        assert any(label.startswith("Put the haloperidol order on hold") for label in labels)


def test_the_long_record_gives_the_same_card(client: FlaskClient) -> None:
    short = _card(client, scenarios.admission_request())
    long = _card(client, scenarios.long_record_request(1_000))
    assert (long["indicator"], long["summary"], long["detail"]) == (short["indicator"], short["summary"],
                                                                     short["detail"])


# --- plain paths == R4B paths --------------------------------------------------------------------------

_MUTANTS: list[Any] = [
    None, "", " ", "\u00a0", "x  y", " x", 1, 1.5, True, 2**60, -0.0, 1e-7, 1e300, "1.5", [], {}, [None],
    {"a": 1}, "2026-11-24T10:00:00Z", "2026-11-24T10:00:60Z", "2026-02-30T10:00:00Z", "2026-02-30", "2026-11-24",
    "2026-11", "2026", "2026-11-24T10:00:00.1234567+01:00", "2026-11-24T10:00:00+14:00", "2026-11-24T10:00:00+14:01",
    "2026-11-24T10:00:00", "0000-01-01T00:00:00Z", "final", "amended", "http://loinc.org", "8310-5", "a" * 300,
    "é", "bad id!", "order", "#med1",
]
_EXTRA_KEYS = ["extension", "id", "userSelected", "comparator", "text", "effectiveInstant", "valueString",
               "_status", "fhir_comments", "contained", "medicationReference", "doseRange", "boundsDuration",
               "asNeededBoolean", "sequence", "end"]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if prefix:
        yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


def _mutate(resource: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    out = copy.deepcopy(resource)
    for _ in range(rng.choice((1, 1, 2))):
        paths = [p for p in _paths(out) if p[0] != "resourceType"]
        path = rng.choice(paths)
        parent: Any = out
        for part in path[:-1]:
            parent = parent[part]
        roll = rng.random()
        if roll < 0.6:
            parent[path[-1]] = copy.deepcopy(rng.choice(_MUTANTS))
        elif roll < 0.8 and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[rng.choice(_EXTRA_KEYS)] = copy.deepcopy(rng.choice(_MUTANTS))
    return out


def _library(kind: str) -> list[dict[str, Any]]:
    found = [r for s in fixtures.load_scenarios() for r in [*s.resources, *s.draft_orders]
             if isinstance(r, dict) and r.get("resourceType") == kind]
    found += [r for r in scenarios.admission_resources() if r["resourceType"] == kind]
    if kind == "MedicationRequest":
        found.append(scenarios.draft_order())
    else:
        found += [r for r in scenarios.long_record_resources(300) if r["resourceType"] == kind][-60:]
    return found


def _variants(kind: str, per_resource: int, seed: int) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    for resource in _library(kind):
        yield resource
        for _ in range(per_resource):
            yield _mutate(resource, rng)


def _tidied(resource: dict[str, Any]) -> int:
    """1 when the R4B path must trim a status or intent first (``"Final "``: read by both paths alike), else 0."""
    return int(any(isinstance(v, str) and v.strip() != v for k, v in resource.items() if k in ("status", "intent")))


def test_plain_observations_equal_the_r4b_path() -> None:
    every_code = frozenset(c.get("code") for r in _library("Observation")
                           for c in r.get("code", {}).get("coding", []) if isinstance(c, dict))
    accepted = declined = 0
    for variant in _variants("Observation", 4, 20261124):
        plain = plain_json.plain_observation(variant, every_code)
        out = extract.Extracted()
        try:
            fhir_observations.parsed_observation(variant, every_code, out)
        except Exception:  # the model itself can fail on some mutants; plain must decline them
            assert plain is None
            continue
        if plain is None:
            declined += 1
            continue
        accepted += 1
        assert (plain, out.repairs, out.unreadable) == (out.observations, _tidied(variant), 0), json.dumps(
            variant)[:300]
    assert accepted > 700 and declined > 300  # both paths are exercised


def test_plain_medication_requests_equal_the_r4b_path() -> None:
    accepted = declined = 0
    for variant in _variants("MedicationRequest", 12, 7):
        for is_draft in (False, True):
            plain = plain_json.plain_medication_request(variant, is_draft=is_draft)
            out = extract.Extracted()
            try:
                parsed = fhir_medications.parsed_medication_request(variant, is_draft=is_draft,
                                                           patient_id="p1" if is_draft else None,
                                                           medications={}, out=out)
            except Exception:  # see above
                assert plain is None
                continue
            if plain is None:
                declined += 1
                continue
            accepted += 1
            assert (plain, out.repairs, out.unreadable) == (parsed, _tidied(variant), 0), json.dumps(variant)[:300]
    assert accepted > 150 and declined > 150


def test_the_plain_path_takes_the_bench_records() -> None:
    """The benchmark measures the plain path: every generated resource is plain."""
    wanted = fhir_observations.relevant_loinc()
    for resource in scenarios.admission_resources():
        if resource["resourceType"] == "Observation":
            assert plain_json.plain_observation(resource, wanted) is not None
        elif resource["resourceType"] == "MedicationRequest":
            assert plain_json.plain_medication_request(resource, is_draft=False) is not None
    assert plain_json.plain_medication_request(scenarios.draft_order(), is_draft=True) is not None


# --- load_json's fast depth check == the original order of checks -------------------------------------


def _original_load_json(body: bytes, max_depth: int) -> Any:
    if not body.strip():
        raise BadRequest("request body is empty; expected a JSON object")
    if json_depth(body) > max_depth:
        raise BadRequest(f"JSON nesting deeper than {max_depth} levels")
    try:
        return json.loads(body)
    except UnicodeDecodeError as exc:
        raise BadRequest("request body is not UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc


def _outcome(function: Any, body: bytes, depth: int) -> tuple[str, Any]:
    try:
        return "ok", function(body, depth)
    except BadRequest as exc:
        return "error", exc.message


def _bodies(rng: random.Random) -> Iterator[bytes]:
    pieces = [b"[", b"]", b"{", b"}", b'"', b"\\", b"\\\\", b'\\"', b":", b",", b"1", b"a", b" ", b"null",
              b"\xc3\xa9", b"\xff", b"\x00"]

    def value(depth: int) -> Any:
        roll = rng.random()
        if depth > 10 or roll < 0.3:
            return rng.choice([1, "a", '[{"', "\\", '\\"x', None, True, 2.5, "]]]}}", "é"])
        if roll < 0.65:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        return {rng.choice(["k", "[", '"', "\\", "}"]) + str(i): value(depth + 1) for i in range(rng.randint(0, 3))}

    for i in range(2000):
        if i % 3 == 0:
            yield b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 30)))
            continue
        body = json.dumps(value(0), ensure_ascii=rng.random() < 0.5).encode()
        if i % 3 == 2:
            at = rng.randrange(len(body))
            body = body[:at] + rng.choice(pieces) + body[at + 1:]
        if rng.random() < 0.1:
            body = body.decode("latin-1").encode("utf-16")
        if rng.random() < 0.05:
            body = b"\xef\xbb\xbf" + body
        yield body
    for depth in (63, 64, 65, 66, 300):
        yield b"[" * depth + b"]" * depth
        yield b'{"a":' * depth + b"1" + b"}" * depth


def test_load_json_answers_like_the_original_checks() -> None:
    rng = random.Random(5)

    def fast(body: bytes, depth: int) -> Any:
        return load_json(body, max_depth=depth)

    for body in _bodies(rng):
        for depth in (3, 8, 64):
            assert _outcome(fast, body, depth) == _outcome(_original_load_json, body, depth), body[:120]


# --- the benchmark's targets table: met on unrounded figures, shown rounded against the service ------------


def _s1_result(service_p50: float, floor_p50: float, service_rps: tuple[int, int], floor_rps: tuple[int, int],
               ) -> dict[str, Any]:
    def sat(requests: int, duration_us: int) -> dict[str, Any]:
        rate = requests * 1e6 / duration_us
        return {"best_rps": round(rate, 1), "best_rps_exact": rate, "worker_cpu_ms_per_request": 1.0, "runs": []}

    return {"single_request": {"service_p50_ms": service_p50, "floor_p50_ms": floor_p50},
            "saturation": {"service": sat(*service_rps), "floor": sat(*floor_rps), "levels": [1, 4]},
            "started": "2026-12-02T00:00:00Z", "load_average_at_start": [0.1, 0.2, 0.3]}


def test_bench_targets_never_round_in_the_services_favour() -> None:
    from bench import run_bench

    results = {
        "machine": {"nproc": 2, "cpu": "test", "memory_gb": 1},
        "options": {"levels": [1, 4, 16, 64]},
        # 1.5004 x the floor; 0.59996 x the floor's throughput (0.6 once rounded to 3 decimals)
        "scenario_1": _s1_result(15.004, 10.0, (59_996, 10_000_000), (100_000, 10_000_000)),
        # exactly at the limits
        "scenario_1_patient_view": _s1_result(15.0, 10.0, (6_000, 1_000_000), (10_000, 1_000_000)),
        "scenario_1_order_select": _s1_result(9.0, 10.0, (7_000, 1_000_000), (10_000, 1_000_000)),
        "scenario_2": {"single_request": {"service_p50_ms": 110.01, "floor_p50_ms": 100.0}, "request_bytes": 8_500_000,
                       "peak_memory_mb": {"service": [120.0, 149.9], "floor": [100.0]}},
    }
    targets = run_bench.evaluate(results)
    single = targets["s1_single_p50_vs_floor"]
    assert (single["met"], single["measured"]) == (False, 1.501)
    throughput = targets["s1_throughput_vs_floor"]
    assert (throughput["met"], throughput["measured"]) == (False, 0.599)
    assert targets["s1pv_single_p50_vs_floor"]["met"] is True
    assert targets["s1pv_single_p50_vs_floor"]["load_average_at_start"] == [0.1, 0.2, 0.3]
    assert targets["s1os_single_p50_vs_floor"]["met"] is True
    assert targets["s1pv_throughput_vs_floor"]["met"] is None  # reported: the 0.6 target is order-sign's
    s2 = targets["s2_single_p50_vs_floor"]
    assert s2["met"] is False and s2["measured"].endswith("+10.1 %")
    assert targets["s2_memory_per_worker"]["met"] is True
    assert "s2_single_p50" not in targets  # the old "<= 100 ms" target was replaced by the issue


def test_the_floor_decodes_as_the_service_does() -> None:
    """Issue 16: the floor parses with the service's own decoder (library and GC handling), so decoding
    speed-ups lower both apps alike."""
    from bench import floor_app
    from cds_service.protocol import decode

    assert floor_app.DECODE is decode.loads_without_gc
    body = scenarios.dumps(scenarios.admission_request())
    assert floor_app.DECODE(body) == load_json(body, max_depth=64)
    app = floor_app.create_floor_app(b'{"cards":[]}')
    seen: list[bool] = []
    app.before_request(lambda: seen.append(gc.isenabled()))  # runs after the floor's own pause
    response = app.test_client().post("/cds-services/nms-patient-view", data=body, content_type="application/json")
    assert response.status_code == 200 and response.data == b'{"cards":[]}'
    assert seen == [False] and gc.isenabled(), "the floor pauses the collector for the request, like the service"
