"""Property-based fuzzing of the HTTP surface: POST /cds-services/{id} and /feedback, through the Flask
test client, with hypothesis (near-valid requests: fixture requests and protocol examples mutated by
dropping, re-typing and adding members, huge strings, deep nesting, odd unicode, random FHIR-looking
resources in draftOrders and prefetch) and with schemathesis (generated from ``/openapi.json``).

Invariants, for every case: never a 5xx; every 4xx is JSON with a non-empty message naming the problem
(412: an OperationOutcome with diagnostics); every 200 passes the CDS Hooks response rules and its card
uuids derive from the request's hookInstance.

``NMS_CDS_FUZZ_EXAMPLES`` sets the examples per property (default 200; ``make fuzz`` uses 10000).
Generation is derandomized (same cases on every run, so a CI failure reproduces locally) unless
``NMS_CDS_FUZZ_RANDOM=1``. The case count is printed at the end of the module and, when
``NMS_CDS_FUZZ_EXAMPLES`` is set, written to ``bench/results/fuzz.json``.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cds_service.app import create_app
from cds_service.clinical.valuesets import LOINC, load
from cds_service.devtools import fixtures
from cds_service.services.cards import card_uuid
from cds_service.services.templates import prefetch_templates
from tests.conftest import REPO, make_settings
from tests.helpers.cdshooks_check import discovery_problems, response_problems
from tests.helpers.outcome import issue
from tests.protocol.test_protocol import hook_request

# A failing example can be large (a whole fixture request); hypothesis warns before printing it.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr:hypothesis.errors.HypothesisWarning")

EXAMPLES = int(os.environ.get("NMS_CDS_FUZZ_EXAMPLES", "200"))
RANDOM = os.environ.get("NMS_CDS_FUZZ_RANDOM") == "1"
URL = "/cds-services/nms-order-sign"
FEEDBACK_URL = URL + "/feedback"
RESULTS = REPO / "bench" / "results" / "fuzz.json"

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not RANDOM,
    database=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)
CASES: Counter[str] = Counter()
FAILURES: Counter[str] = Counter()
STATUSES: Counter[str] = Counter()


# --- the app under test -------------------------------------------------------------------------------

def _refusing_port() -> socket.socket:
    """A loopback port that is bound but not listening: every connection to it is refused at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


_REFUSER = _refusing_port()
CLOSED_FHIR = f"http://127.0.0.1:{_REFUSER.getsockname()[1]}/fhir"  # allowlisted, refuses connections
OFF_LIST_FHIR = "https://not-allowlisted.invalid/fhir"  # never contacted: outside the allowlist


# Built at import: schemathesis loads the document from the app when the module is collected.
# The body limit is pinned at 5 MiB (the production default is 32 MiB) so that the huge-string mutation
# reaches 413 without building 33 MB bodies thousands of times.
BODY_LIMIT = 5 * 1024 * 1024
FUZZ_APP = create_app(make_settings(fixed_now=fixtures.ANCHOR, fhir_allowlist=[CLOSED_FHIR], fhir_connect_timeout=0.5,
                                    hook_budget_seconds=1.0, log_level="WARNING", max_body_bytes=BODY_LIMIT))


@pytest.fixture(scope="module")
def fuzz_app() -> Iterator[Flask]:
    yield FUZZ_APP
    FUZZ_APP.extensions["nms_cds"].close()


@pytest.fixture(scope="module")
def fuzz_client(fuzz_app: Flask) -> FlaskClient:
    return fuzz_app.test_client()


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    started = time.monotonic()
    yield
    elapsed = time.monotonic() - started
    total = sum(CASES.values())
    line = (f"fuzz: {total} cases in {elapsed:.1f} s ({', '.join(f'{k} {v}' for k, v in sorted(CASES.items()))}); "
            f"statuses {dict(sorted(STATUSES.items()))}; failing examples {sum(FAILURES.values())}")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            reporter.write_line(line)
    if "NMS_CDS_FUZZ_EXAMPLES" in os.environ:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({
            "examples_per_property": EXAMPLES, "derandomized": not RANDOM, "cases": total,
            "cases_by_property": dict(sorted(CASES.items())), "statuses": dict(sorted(STATUSES.items())),
            "failing_examples_seen": dict(FAILURES), "seconds": round(elapsed, 1),
        }, indent=2) + "\n", encoding="utf-8")
    _REFUSER.close()


CURRENT = ["?"]  # the property being run, for the per-property status counts


def _counted(name: str, check: Callable[[], None]) -> None:
    CASES[name] += 1
    CURRENT[0] = name
    try:
        check()
    except BaseException:
        FAILURES[name] += 1
        raise


# --- the invariants -----------------------------------------------------------------------------------

def check_answer(status: int, mimetype: str | None, raw: bytes, *, hook_instance: Any = None,
                 feedback_items: int | None = None, hook: str = "order-sign") -> None:
    STATUSES[f"{CURRENT[0]} {status}"] += 1
    assert status < 500, f"server error {status}: {raw[:500]!r}"
    assert status in (200, 400, 404, 405, 412, 413), f"unexpected status {status}: {raw[:300]!r}"
    assert mimetype == "application/json", f"{status} answered as {mimetype}"
    body = json.loads(raw)
    if status == 200 and feedback_items is not None:
        assert body["received"] == feedback_items and 0 <= body["new"] <= feedback_items
    elif status == 200:
        assert response_problems(body) == [], response_problems(body)
        for card in body["cards"]:
            if hook != "order-sign":  # patient-view and order-select: uuids derived from the evidence
                assert hook != "patient-view" or all(a["type"] != "delete" for s in card.get("suggestions", [])
                                                     for a in s["actions"])
                continue
            assert card["uuid"] == card_uuid(hook_instance, f"nms:{card['indicator']}")
            for suggestion in card.get("suggestions", []):
                assert suggestion["uuid"] in {card_uuid(hook_instance, "suggestion:remove-draft"),
                                              card_uuid(hook_instance, "suggestion:order-labs")}
    elif status == 412:
        assert body["resourceType"] == "OperationOutcome"
        diagnostics = body["issue"][0]["diagnostics"]
        assert isinstance(diagnostics, str) and "could not be obtained" in diagnostics
    else:
        first = issue(body)  # a valid FHIR OperationOutcome
        message = first.get("diagnostics")
        assert isinstance(message, str) and message.strip(), body
        field = first["field"]
        if field is not None:
            leaf = field.rsplit(".", 1)[-1].split("[", 1)[0]
            assert field in message or leaf in message, f"message {message!r} does not name field {field!r}"


def post(client: FlaskClient, url: str, payload: Any, *, ascii_only: bool = True) -> Any:
    if isinstance(payload, bytes):
        data = payload
    else:
        text = json.dumps(payload, ensure_ascii=ascii_only, allow_nan=True)
        data = text.encode("utf-8", "surrogatepass")  # a lone surrogate becomes invalid UTF-8 when not escaped
    return client.post(url, data=data, content_type="application/json")


# --- strategies: FHIR-looking values --------------------------------------------------------------------

VS = load()
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
DRUG_CODES = sorted(VS.drugs_by_code)
DRUG_NAMES = sorted({name for name, _, _ in VS.drug_names})
OBS_CODES = sorted(VS.observations_by_code)
UNITS = sorted({u for c in VS.observations_by_code.values() for u in (c.canonical_unit, *c.conversions) if u}
               | {"mg/dL", "umol/L", "%", "degF", "", "U/L", "10*9/L", "kg"})
CONDITIONS = sorted(VS.conditions)
ROUTES = sorted(VS.routes)
TEMPLATE_KEYS = sorted(prefetch_templates())
ODD_STRINGS = ["", " ", "\u0000", "\ufeff", "\u202e\u0644\u0627", "e\u0301\u0301", "\U0001f48a\U0001f321",
               "\ud800", "\udfff", "𝔥𝔞𝔩𝔬𝔭𝔢𝔯𝔦𝔡𝔬𝔩", "HALOPERIDOL", "\u2028\u2029", "'\"\\</script>",
               "{{context.patientId}}", "../../etc/passwd", "Patient/p1", "%00", "ｈａｌｏｐｅｒｉｄｏｌ",
               "null", "NaN", "1e999", "\t\n\r"]

odd_text = st.one_of(
    st.sampled_from(ODD_STRINGS),
    st.text(max_size=30),
    st.text(st.characters(codec="utf-8", exclude_categories=()), max_size=30),
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3),
)
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), odd_text,
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(odd_text, children, max_size=4),
    max_leaves=10,
)
fhir_ids = st.one_of(st.from_regex(r"\A[A-Za-z0-9\-.]{1,64}\Z"), odd_text)


@st.composite
def fhir_times(draw: st.DrawFn) -> Any:
    kind = draw(st.integers(0, 9))
    moment = fixtures.ANCHOR + timedelta(minutes=draw(st.integers(-60 * 24 * 30, 60 * 48)))
    if kind <= 4:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    if kind == 5:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.123+02:00")
    if kind == 6:
        return draw(st.sampled_from([moment.strftime("%Y-%m-%d"), moment.strftime("%Y-%m"), moment.strftime("%Y")]))
    if kind == 7:
        return draw(st.sampled_from(["2026-02-30T10:00:00Z", "2026-11-24T25:61:00Z", "9999-12-31T23:59:59Z",
                                     "0001-01-01T00:00:00Z", "2026-11-24T10:00:00", "yesterday", ""]))
    return draw(json_scalars)


def maybe(draw: st.DrawFn, value: Any, wild: st.SearchStrategy[Any] = json_values) -> Any:
    """Mostly the plausible value, sometimes something of the wrong type."""
    return value if draw(st.integers(0, 9)) < 8 else draw(wild)


@st.composite
def codings(draw: st.DrawFn, system: str, codes: list[str]) -> dict[str, Any]:
    coding = {"system": maybe(draw, system, st.sampled_from([LOINC, RXNORM, "", "urn:oid:1.2"]) | json_scalars),
              "code": maybe(draw, draw(st.sampled_from(codes)))}
    if draw(st.booleans()):
        coding["display"] = draw(st.sampled_from(DRUG_NAMES) | odd_text)
    return coding


@st.composite
def quantities(draw: st.DrawFn) -> Any:
    value = draw(st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.integers(-10, 100_000),
                           st.sampled_from([0, 38.4, 39.4, 9400, 5.4, 180, 1e308, -0.0]), json_scalars))
    unit = draw(st.sampled_from(UNITS))
    quantity: dict[str, Any] = {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}
    for name in draw(st.sets(st.sampled_from(list(quantity)), max_size=2)):
        del quantity[name]
    return maybe(draw, quantity)


def _subject(draw: st.DrawFn) -> Any:
    return maybe(draw, {"reference": draw(st.sampled_from(["Patient/p1", "Patient/nms-classic-nms", "Patient/x",
                                                            "urn:uuid:1", ""]))})


@st.composite
def observations(draw: st.DrawFn) -> dict[str, Any]:
    code = draw(codings(LOINC, OBS_CODES))
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": draw(fhir_ids),
        "status": draw(st.sampled_from(["final", "amended", "corrected", "preliminary", "entered-in-error",
                                        "cancelled", "unknown", "FINAL"])),
        "code": {"coding": maybe(draw, [code], st.lists(json_values, max_size=2))},
        "subject": _subject(draw),
        draw(st.sampled_from(["effectiveDateTime", "effectiveInstant", "issued"])): draw(fhir_times()),
        "valueQuantity": draw(quantities()),
    }
    if draw(st.integers(0, 3)) == 0:
        resource["effectivePeriod"] = {"start": draw(fhir_times()), "end": draw(fhir_times())}
    if draw(st.integers(0, 2)) == 0:
        resource["referenceRange"] = maybe(draw, [{"low": draw(quantities()), "high": draw(quantities())}])
    if draw(st.integers(0, 3)) == 0:
        resource["component"] = [{"code": {"coding": [draw(codings(LOINC, ["8480-6", "8462-4", *OBS_CODES[:5]]))]},
                                  "valueQuantity": draw(quantities())} for _ in range(draw(st.integers(0, 3)))]
        if draw(st.booleans()):
            del resource["valueQuantity"]
    return corrupt(draw, resource)


@st.composite
def medication_requests(draw: st.DrawFn, draft: bool = False) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": draw(fhir_ids),
        "status": "draft" if draft and draw(st.booleans()) else draw(st.sampled_from(
            ["active", "stopped", "completed", "on-hold", "cancelled", "entered-in-error", "draft", "unknown", "x"])),
        "intent": draw(st.sampled_from(["order", "plan", "proposal", "original-order", "bogus"])),
        "subject": _subject(draw),
        "authoredOn": draw(fhir_times()),
    }
    how = draw(st.integers(0, 4))
    if how <= 2:
        drugs = [draw(codings(RXNORM, DRUG_CODES)) for _ in range(draw(st.integers(0, 2)))]
        concept: dict[str, Any] = {"coding": drugs}
        if draw(st.booleans()):
            concept["text"] = draw(st.sampled_from(DRUG_NAMES).map(lambda n: f"{n} 5 MG/ML Injectable") | odd_text)
        resource["medicationCodeableConcept"] = maybe(draw, concept)
    elif how == 3:
        resource["medicationReference"] = {"reference": "#med", "display": draw(st.sampled_from(DRUG_NAMES) | odd_text)}
        resource["contained"] = [{"resourceType": "Medication", "id": "med",
                                  "code": {"coding": [draw(codings(RXNORM, DRUG_CODES))]}}]
    else:
        resource["medicationReference"] = maybe(draw, {"reference": draw(st.sampled_from(
            ["Medication/m1", "Medication/m1/_history/2", "Medication/", "#missing", "http://x/Medication/1"]))})
    if draw(st.booleans()):
        route = {"coding": [draw(codings("http://snomed.info/sct", [code for _, code in ROUTES]))], "text": "IM"}
        dose = {"doseQuantity": {"value": draw(st.floats(0, 1000) | json_scalars), "unit": "mg"}}
        timing = {"repeat": {"boundsPeriod": {"start": draw(fhir_times()), "end": draw(fhir_times())}}}
        resource["dosageInstruction"] = maybe(draw, [{"route": route, "doseAndRate": maybe(draw, [dose], st.just(dose)),
                                                      "timing": timing}])
    if draw(st.booleans()):
        resource["dispenseRequest"] = {"validityPeriod": {"start": draw(fhir_times()), "end": draw(fhir_times())}}
    return corrupt(draw, resource)


@st.composite
def history_resources(draw: st.DrawFn) -> dict[str, Any]:
    system, code = draw(st.sampled_from(CONDITIONS))
    kind = draw(st.sampled_from(["Condition", "AllergyIntolerance"]))
    resource: dict[str, Any] = {
        "resourceType": kind, "id": draw(fhir_ids), "code": {"coding": [{"system": system, "code": code}]},
        "patient" if kind == "AllergyIntolerance" else "subject": _subject(draw),
        "recordedDate": draw(fhir_times()),
        "verificationStatus": {"coding": [{"code": draw(st.sampled_from(["confirmed", "refuted",
                                                                          "entered-in-error"]))}]},
    }
    if kind == "AllergyIntolerance" and draw(st.booleans()):
        resource["reaction"] = [{"manifestation": [{"coding": [{"system": system, "code": code}]}]}]
    return corrupt(draw, resource)


other_resources = st.one_of(
    st.fixed_dictionaries({"resourceType": st.just("Patient"), "id": fhir_ids,
                           "gender": st.sampled_from(["male", "female", "other", "unknown"]) | json_scalars}),
    st.fixed_dictionaries({"resourceType": st.just("Medication"), "id": st.just("m1"),
                           "code": st.fixed_dictionaries({"coding": st.lists(codings(RXNORM, DRUG_CODES),
                                                                             max_size=2)})}),
    st.fixed_dictionaries({"resourceType": st.just("OperationOutcome"),
                           "issue": st.just([{"severity": "error", "code": "processing"}])}),
    st.fixed_dictionaries({"resourceType": st.sampled_from(["Basic", "Bundle", "", "observation", "Observation "]),
                           "id": fhir_ids}),
    st.dictionaries(odd_text, json_values, max_size=3),
    json_scalars,
)
fhir_resources = st.one_of(observations(), medication_requests(), history_resources(), other_resources)


def corrupt(draw: st.DrawFn, resource: dict[str, Any]) -> dict[str, Any]:
    """Sometimes drop, re-type or add a member, anywhere in the resource."""
    for _ in range(draw(st.integers(0, 2)) if draw(st.integers(0, 3)) == 0 else 0):
        mutate_somewhere(draw, resource)
    return resource


@st.composite
def bundles(draw: st.DrawFn, resources: st.SearchStrategy[Any] = fhir_resources) -> dict[str, Any]:
    entries: list[Any] = []
    for resource in draw(st.lists(resources, max_size=6)):
        entry: Any = {"fullUrl": "urn:uuid:x", "resource": resource}
        if draw(st.integers(0, 4)) == 0:
            entry["search"] = {"mode": draw(st.sampled_from(["match", "include", "outcome", 3]))}
        entries.append(maybe(draw, entry))
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": maybe(draw, "searchset"), "entry": entries}
    if draw(st.integers(0, 4)) == 0:
        bundle["link"] = [{"relation": "next", "url": draw(st.sampled_from(
            [f"{CLOSED_FHIR}/Observation?page=2", "http://offsite.invalid/fhir/Observation?page=2", "Observation?x=1",
             ""]))}]
    if draw(st.integers(0, 5)) == 0:
        bundle["total"] = draw(json_scalars)
    return bundle


# --- strategies: mutating whole requests ----------------------------------------------------------------

def paths_of(value: Any, prefix: tuple[Any, ...] = (), depth: int = 7) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    if depth == 0:
        return out
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        out.append((*prefix, key))
        out.extend(paths_of(child, (*prefix, key), depth - 1))
    return out


def _parent(root: Any, path: tuple[Any, ...]) -> Any:
    node = root
    for part in path[:-1]:
        node = node[part]
    return node


def _pick(draw: st.DrawFn, body: Any) -> tuple[Any, ...] | None:
    paths = paths_of(body)
    return draw(st.sampled_from(paths)) if paths else None


def mutate_somewhere(draw: st.DrawFn, body: Any) -> None:
    path = _pick(draw, body)
    if path is None:
        return
    parent, key = _parent(body, path), path[-1]
    action = draw(st.integers(0, 3))
    if action == 0:
        del parent[key]
    elif action == 1:
        parent[key] = draw(json_values)
    elif action == 2 and isinstance(parent[key], dict):
        parent[key][draw(odd_text)] = draw(json_values)
    else:
        parent[key] = draw(odd_text)


def m_drop_retype_extend(draw: st.DrawFn, body: dict[str, Any]) -> None:
    mutate_somewhere(draw, body)


def m_extra_fields(draw: st.DrawFn, body: dict[str, Any]) -> None:
    target = draw(st.sampled_from(["top", "context", "prefetch", "draftOrders"]))
    node: Any = body
    if target != "top":
        node = body.get("context", {}) if target == "context" else body.get("prefetch") if target == "prefetch" else (
            body.get("context", {}) or {}).get("draftOrders") if isinstance(body.get("context"), dict) else None
    if isinstance(node, dict):
        node.update(draw(st.dictionaries(odd_text | st.sampled_from(["extension", "fhirContext", "prefetch"]),
                                         json_values, min_size=1, max_size=4)))


def m_huge_string(draw: st.DrawFn, body: dict[str, Any]) -> None:
    size = draw(st.sampled_from([1_000, 70_000, 1_000_000, 6 * 1024 * 1024]))
    char = draw(st.sampled_from(["x", "é", "\U0001f48a", "\\", '"']))
    path = draw(st.sampled_from([("hookInstance",), ("hook",), ("fhirServer",), ("context", "userId"),
                                 ("context", "patientId"), ("extra",)]))
    node: Any = body
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node[path[-1]] = char * (size // len(char.encode()))


def m_deep_nesting(draw: st.DrawFn, body: dict[str, Any]) -> None:
    depth = draw(st.integers(1, 300))
    value: Any = draw(json_scalars)
    for _ in range(depth):
        value = [value] if draw(st.booleans()) else {"a": value}
    path = _pick(draw, body)
    if path is None:
        body["deep"] = value
    else:
        _parent(body, path)[path[-1]] = value


def m_odd_unicode(draw: st.DrawFn, body: dict[str, Any]) -> None:
    strings = [p for p in paths_of(body) if isinstance(_parent(body, p)[p[-1]], str)]
    if strings:
        path = draw(st.sampled_from(strings))
        old = _parent(body, path)[path[-1]]
        _parent(body, path)[path[-1]] = draw(st.sampled_from([old + draw(odd_text), draw(odd_text) + old,
                                                               draw(odd_text)]))


def m_draft_resources(draw: st.DrawFn, body: dict[str, Any]) -> None:
    context = body.get("context")
    if not isinstance(context, dict):
        return
    orders = context.setdefault("draftOrders", {"resourceType": "Bundle", "entry": []})
    if isinstance(orders, dict):
        entries = orders.get("entry")
        if not isinstance(entries, list):
            entries = orders["entry"] = []
        new = draw(st.lists(st.one_of(medication_requests(draft=True), fhir_resources), min_size=1, max_size=4))
        entries.extend(maybe(draw, {"resource": r}) for r in new)


def m_prefetch(draw: st.DrawFn, body: dict[str, Any]) -> None:
    prefetch = body.get("prefetch")
    if not isinstance(prefetch, dict):
        prefetch = body["prefetch"] = {}
    key = draw(st.sampled_from(TEMPLATE_KEYS) | odd_text)
    kind = draw(st.integers(0, 5))
    if kind <= 2:
        prefetch[key] = draw(bundles(st.one_of(observations(), medication_requests(), history_resources())
                                     if kind < 2 else fhir_resources))
    elif kind == 3:
        prefetch[key] = draw(other_resources)
    elif kind == 4:
        prefetch.pop(key, None)
    else:
        prefetch[key] = None


def m_fhir_server(draw: st.DrawFn, body: dict[str, Any]) -> None:
    body["fhirServer"] = draw(st.sampled_from([CLOSED_FHIR, CLOSED_FHIR + "/", OFF_LIST_FHIR, "ftp://x",
                                               "http://user:pw@127.0.0.1/fhir", "not a url", " "]) | json_scalars)
    if draw(st.booleans()):
        body["fhirAuthorization"] = maybe(draw, {"access_token": draw(st.sampled_from(["t0k3n", ""]) | odd_text),
                                                 "token_type": draw(st.sampled_from(["Bearer", "bearer", "MAC"])),
                                                 "expires_in": 300, "scope": "patient/*.read", "subject": "cds"})
    if draw(st.booleans()):
        body.pop("prefetch", None)


def m_identity(draw: st.DrawFn, body: dict[str, Any]) -> None:
    field = draw(st.sampled_from(["hook", "hookInstance", "patientId", "encounterId", "userId"]))
    if field == "hook":
        body["hook"] = draw(st.sampled_from(["order-sign", "ORDER-SIGN", "order-select", "patient-view", ""]))
    elif field == "hookInstance":
        body["hookInstance"] = draw(st.sampled_from(["a" * 127, "a" * 128, "a" * 129, " ", "é" * 128]) | odd_text)
    elif isinstance(body.get("context"), dict):
        body["context"][field] = draw(fhir_ids | st.sampled_from(["p1\n", "a/b", "a" * 65, "Practitioner/x"]))


def m_selections(draw: st.DrawFn, body: dict[str, Any]) -> None:
    context = body.get("context")
    if not isinstance(context, dict):
        return
    ids = [f"MedicationRequest/{e['resource']['id']}" for e in (context.get("draftOrders") or {}).get("entry") or []
           if isinstance(e, dict) and isinstance(e.get("resource"), dict) and isinstance(e["resource"].get("id"), str)]
    context["selections"] = draw(st.one_of(
        st.lists(st.sampled_from([*ids, "MedicationRequest/none", "ServiceRequest/x", "Medication Request/x",
                                  "MedicationRequest/", "/x", "MedicationRequest/a/b"]), max_size=4),
        json_values))


MUTATIONS = [m_drop_retype_extend, m_extra_fields, m_huge_string, m_deep_nesting, m_odd_unicode, m_draft_resources,
             m_prefetch, m_fhir_server, m_identity, m_selections]


def _bases() -> list[dict[str, Any]]:
    """Order-sign requests, and each also as patient-view and order-select (``fixtures.request_for_hook``)."""
    chosen = ["classic-nms", "early-nms", "metoclopramide", "contained-medication", "sandbox-quirks", "no-data",
              "past-nms-rechallenge", "dopaminergic-withdrawal"]
    signs = [fixtures.load_scenario(s).request for s in chosen]
    minimal = hook_request()
    no_prefetch = {k: v for k, v in hook_request().items() if k != "prefetch"}
    signs += [minimal, {**no_prefetch, "fhirServer": CLOSED_FHIR}]
    return [fixtures.request_for_hook(body, hook) for body in signs for hook in fixtures.HOOKS]


BASES = _bases()
URLS = {hook: f"/cds-services/nms-{hook}" for hook in fixtures.HOOKS}


@st.composite
def hook_requests(draw: st.DrawFn) -> tuple[Any, bool, str]:
    """A request, whether to send it ASCII-escaped, and the hook whose service it is sent to."""
    body = copy.deepcopy(draw(st.sampled_from(BASES)))
    hook = body["hook"]
    for _ in range(draw(st.integers(0, 4))):
        draw(st.sampled_from(MUTATIONS))(draw, body)
    return body, draw(st.integers(0, 9)) > 0, hook


# --- hypothesis properties ------------------------------------------------------------------------------

def test_fuzz_hook_requests(fuzz_client: FlaskClient) -> None:
    @FUZZ
    @given(case=hook_requests())
    def run(case: tuple[Any, bool, str]) -> None:
        body, ascii_only, hook = case

        def check() -> None:
            response = post(fuzz_client, URLS[hook], body, ascii_only=ascii_only)
            hook_instance = body.get("hookInstance") if isinstance(body, dict) else None
            check_answer(response.status_code, response.mimetype, response.get_data(), hook_instance=hook_instance,
                         hook=hook)

        _counted(f"hook {hook}", check)

    run()


COMMON_REQUIRED = [("hook",), ("hookInstance",), ("context",), ("context", "patientId"), ("context", "userId")]
REQUIRED = {"order-sign": [*COMMON_REQUIRED, ("context", "draftOrders")],
            "order-select": [*COMMON_REQUIRED, ("context", "draftOrders"), ("context", "selections")],
            "patient-view": COMMON_REQUIRED}


@st.composite
def one_required_violation(draw: st.DrawFn) -> tuple[dict[str, Any], str, str]:
    body = copy.deepcopy(draw(st.sampled_from(BASES)))
    hook = body["hook"]
    path = draw(st.sampled_from(REQUIRED[hook]))
    parent = _parent(body, path)
    if draw(st.booleans()):
        del parent[path[-1]]
    else:
        wrong: st.SearchStrategy[Any] = st.one_of(st.none(), st.booleans(), st.integers(), st.just("  "))
        if path[-1] != "selections":  # a list there is checked item by item (its field names the item)
            wrong = wrong | st.lists(st.integers(), max_size=2)
        if path[-1] not in ("context", "draftOrders"):
            wrong = wrong | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
        parent[path[-1]] = draw(wrong)
    return body, ".".join(path), hook


def test_fuzz_one_missing_or_mistyped_field_is_named(fuzz_client: FlaskClient) -> None:
    """A request that is valid except for one REQUIRED member gets a 400 naming exactly that member."""
    @FUZZ
    @given(case=one_required_violation())
    def run(case: tuple[dict[str, Any], str, str]) -> None:
        body, field, hook = case

        def check() -> None:
            response = post(fuzz_client, URLS[hook], body)
            check_answer(response.status_code, response.mimetype, response.get_data())
            assert response.status_code == 400, response.get_data(as_text=True)
            assert issue(response.get_json())["field"] == field

        _counted("hook-required-field", check)

    run()


@st.composite
def feedback_items(draw: st.DrawFn) -> Any:
    outcome = draw(st.sampled_from(["accepted", "overridden"]))
    item: dict[str, Any] = {
        "card": maybe(draw, draw(st.uuids().map(str)), odd_text),
        "outcome": maybe(draw, outcome, st.sampled_from(["ACCEPTED", "ignored", ""]) | json_scalars),
        "outcomeTimestamp": maybe(draw, "2026-11-24T12:00:00Z", fhir_times()),
    }
    if outcome == "accepted" or draw(st.booleans()):
        item["acceptedSuggestions"] = maybe(draw, [{"id": draw(st.uuids().map(str))}],
                                            st.lists(json_values, max_size=3) | json_values)
    if outcome == "overridden" and draw(st.booleans()):
        item["overrideReason"] = maybe(draw, {"reason": {"code": "already-managed", "system": "https://x"},
                                              "userComment": draw(odd_text)})
    return maybe(draw, item)


@st.composite
def feedback_bodies(draw: st.DrawFn) -> Any:
    body: Any = {"feedback": draw(st.lists(feedback_items(), min_size=1, max_size=4))}
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        mutation = draw(st.sampled_from([m_drop_retype_extend, m_extra_fields, m_huge_string, m_deep_nesting,
                                         m_odd_unicode]))
        mutation(draw, body)
    return body if draw(st.integers(0, 19)) else draw(json_values)


def test_fuzz_feedback(fuzz_client: FlaskClient) -> None:
    services = st.sampled_from(["nms-order-sign"] * 3 + ["nms-patient-view"] * 3 + ["nms-order-select"] * 3
                               + ["other"])

    @FUZZ
    @given(body=feedback_bodies(), ascii_only=st.booleans(), service=services)
    def run(body: Any, ascii_only: bool, service: str) -> None:
        def check() -> None:
            response = post(fuzz_client, f"/cds-services/{service}/feedback", body, ascii_only=ascii_only)
            items = len(body["feedback"]) if isinstance(body, dict) and isinstance(body.get("feedback"), list) else None
            check_answer(response.status_code, response.mimetype, response.get_data(), feedback_items=items)
            if service == "other":
                assert response.status_code == 404

        _counted("feedback", check)

    run()


raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.sampled_from([b"", b" ", b"{", b"[]", b"null", b"NaN", b'{"hook": NaN}', b"\xef\xbb\xbf{}", b"\xff\xfe{}",
                     b'{"a": "\\ud800"}', b'{"hook": "order-sign", "hook": 1}', b"1" * 5000, b"[" * 70 + b"]" * 70,
                     b'{"hook": "' + b'\\"' * 40_000, b'"' + b"\\" * 50_000, b'["' + b"[" * 100_000]),
    hook_requests().map(lambda case: json.dumps(case[0]).encode()[: len(json.dumps(case[0])) // 2]),  # truncated
)


def test_fuzz_raw_bodies(fuzz_client: FlaskClient) -> None:
    @settings(FUZZ, max_examples=max(EXAMPLES // 4, 20))
    @given(raw=raw_bodies, url=st.sampled_from([*URLS.values(), FEEDBACK_URL]))
    def run(raw: bytes, url: str) -> None:
        def check() -> None:
            response = fuzz_client.post(url, data=raw, content_type="application/json")
            check_answer(response.status_code, response.mimetype, response.get_data(), hook_instance=None,
                         feedback_items=0 if url == FEEDBACK_URL else None)
            assert response.status_code in (400, 413) or raw.strip().startswith((b"{", b"\xef\xbb\xbf"))

        _counted("raw", check)

    run()


# --- schemathesis, from the OpenAPI document --------------------------------------------------------------

schema = schemathesis.openapi.from_wsgi("/openapi.json", FUZZ_APP)


def _our_invariants(ctx: Any, response: Any, case: Any) -> bool | None:
    mimetype = response.headers.get("content-type", [""])[0].split(";")[0]
    if case.method.upper() != case.operation.method.upper():  # probing a method the route does not have
        STATUSES[f"{CURRENT[0]} {response.status_code}"] += 1
        if case.method.upper() == "OPTIONS":  # CORS preflight: Flask's automatic OPTIONS answer
            assert response.status_code == 200 and "access-control-allow-methods" in response.headers
        else:
            assert response.status_code == 405 and mimetype == "application/json"
            assert issue(json.loads(response.content))["diagnostics"]
        return None
    STATUSES[f"{CURRENT[0]} {response.status_code}"] += 1 if case.method.upper() == "GET" else 0
    if case.operation.path in ("/app/", "/app/{name}"):  # the trend view's files, else a JSON 404
        assert (response.status_code == 200 and mimetype in ("text/html", "text/javascript", "text/css")) or (
            response.status_code == 404 and mimetype == "application/json")
        assert "script-src 'self'" in response.headers["content-security-policy"][0]
        return None
    if case.operation.path == "/app/api/assessment":  # no token: 401 unless refused before (400, 413)
        assert response.status_code in (400, 401, 413) and mimetype == "application/json", response.status_code
        assert issue(json.loads(response.content))["diagnostics"]
        return None
    if case.operation.path.startswith("/worklist"):  # development: open; JSON (or an escaped HTML page)
        assert response.status_code in (200, 400, 404) and mimetype in ("application/json", "text/html")
        if mimetype == "application/json" and response.status_code != 200:
            assert issue(json.loads(response.content))["diagnostics"]
        return None
    if case.method.upper() == "GET":  # discovery, health, the document: always 200 JSON (auth is off here)
        expected = "text/plain" if case.operation.path == "/metrics" else "application/json"  # Prometheus format
        assert response.status_code == 200 and mimetype == expected
        if case.operation.path == "/cds-services":
            assert discovery_problems(json.loads(response.content)) == []
        return None
    body = case.body if isinstance(case.body, dict) else {}
    items = None
    if case.operation.path.endswith("/feedback"):
        feedback = body.get("feedback")
        items = len(feedback) if isinstance(feedback, list) else 0
    check_answer(response.status_code, mimetype, response.content,
                 hook_instance=body.get("hookInstance"), feedback_items=items)
    return None


@schema.parametrize()
@settings(FUZZ, max_examples=max(EXAMPLES // 2, 20))
def test_schemathesis(case: Any, fuzz_app: Flask) -> None:
    def check() -> None:
        case.call_and_validate(
            checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                    response_headers_conformance, response_schema_conformance, negative_data_rejection],
            additional_checks=[_our_invariants],
        )

    documented = case.method.upper() == case.operation.method.upper()
    _counted(f"schemathesis {case.method} {case.operation.path}" if documented else "schemathesis other methods",
             check)


@pytest.mark.parametrize("size", [64 * 1024, 4 * 1024 * 1024])
def test_malformed_bodies_are_rejected_in_linear_time(size: int) -> None:
    """Regression: an unterminated string of escaped quotes made the depth check quadratic (64 KB: 12 s;
    a body at the 32 MiB limit would pin a worker for hours). Found by test_fuzz_raw_bodies."""
    app = create_app(make_settings(log_level="WARNING"))  # the production body limit
    client = app.test_client()
    try:
        for body in (b'{"hook": "' + b'\\"' * (size // 2), b'"' + b"\\" * size, b'"' + b"[" * size):
            started = time.perf_counter()
            response = client.post(URL, data=body, content_type="application/json")
            elapsed = time.perf_counter() - started
            # 413: more JSON values than NMS_CDS_MAX_JSON_ITEMS, whose count includes brackets inside strings
            assert response.status_code in (400, 413), response.get_data(as_text=True)[:200]
            assert elapsed < 2.0, f"{len(body)} bytes took {elapsed:.1f} s"
    finally:
        app.extensions["nms_cds"].close()
