"""Tests of the synthetic fixture library (cds_service/fixtures.py) and its generator (fhir_fixtures/)."""

from __future__ import annotations

import copy
import importlib.util
import re
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from cds_service.clinical.valuesets import LOINC, RXNORM, SNOMED, load
from cds_service.devtools.fixtures import (
    ANCHOR,
    FIXTURES_ROOT,
    Scenario,
    delta_to,
    fill_prefetch,
    load_scenario,
    load_scenarios,
    rebase,
    search,
)
from cds_service.fhir.models import tidy
from cds_service.services.templates import prefetch_templates
from tests.conftest import REPO

GENERATOR = REPO / "fhir_fixtures" / "build_fixtures.py"
POINTS = {"exposure": 20, "hyperthermia": 18, "ck": 10, "autonomic": 10, "hypermetabolism": 5}
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
OK_STATUS = {"final", "amended", "corrected"}
VS = load()
#: Scenarios that hold another patient's resources under look-alike subjects on purpose (identifier only,
#: display only, an absolute reference on another server): none of them may become evidence.
LOOK_ALIKE_SUBJECTS = {"identity-by-shape"}


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nms_build_fixtures", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scenarios() -> list[Scenario]:
    return load_scenarios()


def _files(root: Path) -> dict[str, bytes]:
    out = {str(p.relative_to(root)): p.read_bytes() for p in (root / "scenarios").rglob("*.json")}
    out["README.md"] = (root / "README.md").read_bytes()
    return out


def _walk(obj: Any) -> Iterator[Any]:
    yield obj
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v)


def _validate(resource: dict[str, Any]) -> None:
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)


# ---------------------------------------------------------------------------------------------------
# generator
# ---------------------------------------------------------------------------------------------------


def test_generator_is_deterministic_and_matches_committed_files(generator: ModuleType, tmp_path: Path) -> None:
    generator.build(tmp_path / "a")
    generator.build(tmp_path / "b")
    first, second = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert first == second
    committed = _files(REPO / "fhir_fixtures")
    assert sorted(committed) == sorted(first), "run: .venv/bin/python fhir_fixtures/build_fixtures.py"
    for name, content in first.items():
        assert committed[name] == content, f"{name} is stale; regenerate the fixtures"
    for content in first.values():
        assert content.endswith(b"\n") and not content.endswith(b"\n\n")


def test_build_removes_stale_scenarios(generator: ModuleType, tmp_path: Path) -> None:
    stale = tmp_path / "scenarios" / "no-longer-there"
    stale.mkdir(parents=True)
    (stale / "expected.json").write_text("{}")
    generator.build(tmp_path)
    assert not stale.exists()


def test_scenario_catalogue(scenarios: list[Scenario]) -> None:
    ids = [s.id for s in scenarios]
    assert ids == sorted(ids)
    assert len(ids) >= 19
    for required in ("classic-nms", "sandbox-quirks", "no-data", "resources-without-ids", "depot-paliperidone"):
        assert required in ids
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", i) for i in ids)
    assert load_scenario("classic-nms").expected == next(s for s in scenarios if s.id == "classic-nms").expected
    with pytest.raises(KeyError):
        load_scenario("does-not-exist")
    assert load_scenarios(FIXTURES_ROOT)[0].id == ids[0]


# ---------------------------------------------------------------------------------------------------
# FHIR validity
# ---------------------------------------------------------------------------------------------------


def _normalise_sandbox_quirks(resource: dict[str, Any]) -> dict[str, Any]:
    """Repair only the fields where the real sandbox client deviates from R4 (cds-hooks.md section 15)."""
    fixed = copy.deepcopy(resource)
    if fixed["resourceType"] == "MedicationRequest":
        if isinstance(fixed.get("category"), dict):
            fixed["category"] = [fixed["category"]]
        fixed.setdefault("intent", "order")
        if not any(k.startswith("medication") for k in fixed):
            fixed["medicationCodeableConcept"] = {"text": "not yet chosen"}
    return fixed


# Scenarios that carry a harmless malformation on purpose (the service reads it, see cds_service.fhir.models.tidy):
# their bundle is valid R4 once tidied, and really is invalid before.
READ_LENIENTLY = ("status-final-with-space", "extension-without-url")


def _tidied(bundle: dict[str, Any]) -> dict[str, Any]:
    fixed = copy.deepcopy(bundle)
    for entry in fixed["entry"]:
        tidy(entry["resource"])
    return fixed


def test_bundles_and_requests_parse_as_r4b(scenarios: list[Scenario]) -> None:
    for s in scenarios:
        if s.id in READ_LENIENTLY:
            with pytest.raises(ValidationError):
                get_fhir_model_class("Bundle").model_validate(s.bundle)
            get_fhir_model_class("Bundle").model_validate(_tidied(s.bundle))
            continue
        get_fhir_model_class("Bundle").model_validate(s.bundle)
        for value in s.request["prefetch"].values():
            if value is not None:
                _validate(value)
        drafts = s.request["context"]["draftOrders"]
        if s.id == "sandbox-quirks":
            assert "type" not in drafts  # the client's shape, kept on purpose
            for resource in s.draft_orders:
                _validate(_normalise_sandbox_quirks(resource))
            with pytest.raises(ValidationError):
                _validate(s.draft_orders[0])  # category as an object really is invalid R4
        else:
            get_fhir_model_class("Bundle").model_validate(drafts)
            for resource in s.draft_orders:
                _validate(resource)


def test_sandbox_quirks_keep_the_client_shape() -> None:
    s = load_scenario("sandbox-quirks")
    mr, empty, diet = s.draft_orders
    assert mr["id"] == "request-123" and isinstance(mr["category"], dict)
    assert mr["medicationCodeableConcept"]["coding"][0]["code"] == "197535"
    assert mr["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["code"] == "{pill}"
    assert "intent" not in empty and not any(k.startswith("medication") for k in empty)
    assert diet["resourceType"] == "NutritionOrder"


def test_transaction_bundle_shape_and_unique_ids(scenarios: list[Scenario]) -> None:
    seen: dict[tuple[str, str], str] = {}
    for s in scenarios:
        assert s.bundle["type"] == "transaction"
        assert s.patient_id == f"nms-{s.id}"
        patients = [r for r in s.resources if r["resourceType"] == "Patient"]
        assert [p["id"] for p in patients] == [s.patient_id]
        for entry in s.bundle["entry"]:
            resource = entry["resource"]
            rid = resource["id"]
            assert FHIR_ID.match(rid), rid
            assert rid.startswith((s.id, f"nms-{s.id}")), rid
            assert entry["request"] == {"method": "PUT", "url": f"{resource['resourceType']}/{rid}"}
            key = (resource["resourceType"], rid)
            # one id twice only as two versions of one resource in one scenario (duplicate-observation-id)
            assert key not in seen or (seen[key] == s.id and resource["meta"].get("versionId")), (
                f"{key} in {s.id} and {seen.get(key)}")
            seen[key] = s.id
            if resource["resourceType"] != "Patient":
                ref = resource.get("subject", resource.get("patient", {})).get("reference")
                assert ref in (None, f"Patient/{s.patient_id}") or s.id in LOOK_ALIKE_SUBJECTS
        for resource in s.draft_orders:
            if "id" in resource:
                assert FHIR_ID.match(resource["id"])
                key = (resource["resourceType"], resource["id"])
                assert key not in seen, key
                seen[key] = s.id


def test_observations_follow_conventions(scenarios: list[Scenario]) -> None:
    for s in scenarios:
        for r in s.resources:
            if r["resourceType"] != "Observation":
                continue
            assert r["effectiveDateTime"].endswith("Z")
            assert r["category"][0]["coding"][0]["code"] in ("vital-signs", "laboratory")
            code = r["code"]["coding"][0]["code"]
            if code in VS.culture_codes:  # a coded result (blood culture), no quantity
                assert r["valueCodeableConcept"]["coding"], code
                continue
            concept = VS.observation(SITE_CODES.get(code, code))
            assert concept is not None, code
            quantities = [r["valueQuantity"]] if "valueQuantity" in r else [c["valueQuantity"] for c in r["component"]]
            for q in quantities:
                if s.id in REAL_DATA_UNITS:  # spellings real records use (UCUM variants, BP without a unit)
                    assert "code" not in q or _ucum(q["code"]) is not None, (s.id, q)
                    continue
                assert q["system"] == "http://unitsofmeasure.org" and q["unit"] == q["code"]
            if "valueQuantity" in r:
                assert _ucum(r["valueQuantity"]["code"]) in concept.conversions
                for rng in r.get("referenceRange", []):
                    for bound in rng.values():
                        assert _ucum(bound["code"]) == _ucum(r["valueQuantity"]["code"])


REAL_DATA_UNITS = {"atc-german-record"}
# LOINC codes no table reads, that a scenario's site file maps (tests/knowledge/test_site_file.py): the code whose
# units the site's reading takes
SITE_CODES = {"32673-6": "2157-6"}


def _ucum(unit: str) -> str | None:
    """The UCUM code of a unit spelling (data/ucum-variants.tsv)."""
    return VS.unit_spellings.get(unit, unit)


def test_codes_come_from_the_project_tables(scenarios: list[Scenario]) -> None:
    non_listed_rxnorm = {"198440"}  # acetaminophen, from the sandbox's Synthea data (see the generator)
    non_listed_snomed = {"226211001"}  # pureed diet, from the hook-library NutritionOrder example
    non_listed_atc = {"A02BC02"}  # pantoprazole, a drug no rule reads (see the generator)
    routes = {code for (_system, code) in VS.routes}
    for s in scenarios:
        documents = [s.bundle, s.request["context"]["draftOrders"]]
        for node in _walk(documents):
            if not (isinstance(node, dict) and "system" in node and "code" in node):
                continue
            system, code = node["system"], node["code"]
            if system == LOINC:
                assert VS.observation(code) is not None or code in VS.culture_codes or code in SITE_CODES, code
            elif system == RXNORM:
                assert VS.drug(code) is not None or code in non_listed_rxnorm, code
            elif system in VS.icd10_systems:  # ICD-10-CM, WHO ICD-10, ICD-10-GM
                assert VS.condition(system, code) is not None or VS.cause_of(system, code), code
            elif system == SNOMED:
                assert ((system, code) in VS.conditions or VS.cause_of(system, code) or code in routes
                        or (system, code) in VS.culture_results or code in non_listed_snomed), code
            elif system in VS.atc_systems:
                assert (code in VS.drugs_by_atc or VS.other_drug(system, code) is not None
                        or code in non_listed_atc), code


# ---------------------------------------------------------------------------------------------------
# requests and expectations
# ---------------------------------------------------------------------------------------------------


def _solicited(prefetch: dict[str, Any]) -> dict[str, Any]:
    """``prefetch`` without the entries a client added although the key's search does not match them (a subject
    without a reference: see ``Builder.unsolicited`` in the generator)."""
    out = {}
    for key, value in prefetch.items():
        if isinstance(value, dict) and value.get("resourceType") == "Bundle" and "entry" in value:
            entries = [e for e in value["entry"] if "reference" in e["resource"].get("subject", {"reference": ""})]
            value = {**value, "entry": entries} if entries else {k: v for k, v in value.items() if k != "entry"}
        out[key] = value
    return out


def test_requests_are_prefetch_only_order_sign(scenarios: list[Scenario]) -> None:
    templates = prefetch_templates()
    for s in scenarios:
        req = s.request
        assert req["hook"] == "order-sign"
        assert "fhirServer" not in req and "fhirAuthorization" not in req
        uuid.UUID(req["hookInstance"])
        assert req["context"]["userId"] == "Practitioner/example"
        assert set(req["prefetch"]) == set(templates)
        assert _solicited(req["prefetch"]) == fill_prefetch(s.resources, templates, s.patient_id)
        assert req["prefetch"]["patient"]["id"] == s.patient_id
        for resource in s.draft_orders:
            if resource["resourceType"] == "MedicationRequest":
                assert resource["status"] == "draft"
                if s.id == "future-authored-draft":  # a planned start stamped on the draft, on purpose
                    assert _time(resource["authoredOn"]) > ANCHOR
                else:
                    assert resource["authoredOn"] == ANCHOR.date().isoformat()
    hook_instances = [s.request["hookInstance"] for s in scenarios]
    assert len(set(hook_instances)) == len(hook_instances)


def test_medication_reference_target_is_server_side_only() -> None:
    s = load_scenario("medication-reference-display")
    ref = s.draft_orders[0]["medicationReference"]
    assert ref["display"] == "haloperidol 5 MG/ML Injectable Solution"
    _rtype, rid = ref["reference"].split("/")
    assert search(s.resources, ref["reference"]) is not None
    for value in s.request["prefetch"].values():
        assert all(n.get("id") != rid for n in _walk(value) if isinstance(n, dict))
    contained = load_scenario("contained-medication").draft_orders[0]
    assert contained["medicationReference"] == {"reference": "#med1"}
    assert contained["contained"][0]["id"] == "med1"


def test_expected_files_are_consistent(scenarios: list[Scenario]) -> None:
    evidence_keys = {"tmax_cel", "ck_peak_u_l", "ck_uln_u_l", "iron_min_umol_l", "wbc_max_10e9_l"}
    for s in scenarios:
        e = s.expected
        assert e["id"] == s.id and e["title"] and e["shows"] and e["notes"]
        assert e["indicator"] in ("critical", "warning", None)
        assert set(e["criteria"]) <= set(POINTS)
        assert e["criteria"] == [c for c in POINTS if c in e["criteria"]]
        assert sum(POINTS[c] for c in e["criteria"]) == e["iec_points"]
        assert set(e["evidence"]) <= evidence_keys
        if e["indicator"] is None:
            assert e["drugs"] == [] and e["suggest_delete_draft"] is None and e["evidence"] == {}
        else:
            assert e["drugs"]
        if e["indicator"] == "critical":  # docs/clinical-rules.md, indicator policy: routes to a critical card
            assert "exposure" in e["criteria"] and "hyperthermia" in e["criteria"]
            extreme = e["evidence"].get("tmax_cel", 0.0) >= 40.0 and bool(
                {"autonomic", "hypermetabolism"} & set(e["criteria"]))
            previous_nms = any(n.get("code") == "G21.0" for n in _walk(s.bundle) if isinstance(n, dict))
            assert ("ck" in e["criteria"] or e["evidence"].get("iron_min_umol_l", 99.0) <= 10.0 or extreme
                    or previous_nms), s.id
        hooks = e["hooks"]
        assert set(hooks) == {"patient-view", "patient-view-why", "order-select", "order-sign"}
        assert hooks["order-sign"] == e["indicator"] and hooks["patient-view-why"]
        assert hooks["patient-view"] in ("critical", "warning", None)
        assert hooks["order-select"] in (e["indicator"], None)
        target = e["suggest_delete_draft"]
        if target is not None:
            ids = {f"{r['resourceType']}/{r['id']}" for r in s.draft_orders if "id" in r}
            assert target in ids


# A tiny re-computation of the simple criteria, to catch slips in the hand-written expectations.


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _canonical(obs: dict[str, Any]) -> float:
    concept = VS.observation(obs["code"]["coding"][0]["code"])
    assert concept is not None
    q = obs["valueQuantity"]
    return concept.conversions[_ucum(q["code"]) or ""].apply(q["value"])


def _final(s: Scenario, concept: str, hours: float) -> list[dict[str, Any]]:
    newest: dict[str, dict[str, Any]] = {}  # one resource per id: the highest versionId
    for r in s.resources:
        if r["resourceType"] == "Observation" and int(r["meta"].get("versionId", "0")) >= int(
                newest.get(r["id"], {"meta": {}})["meta"].get("versionId", "0")):
            newest[r["id"]] = r
    plausible = VS.thresholds["plausible"].get(concept, (float("-inf"), float("inf")))
    return [
        r for r in newest.values()
        if r["status"].strip().lower() in OK_STATUS and "valueQuantity" in r
        and r["subject"].get("reference") == f"Patient/{s.patient_id}"  # not another patient's (look-alike)
        and (c := VS.observation(r["code"]["coding"][0]["code"])) is not None and c.concept == concept
        and ANCHOR - timedelta(hours=hours) <= _time(r["effectiveDateTime"]) <= ANCHOR
        and plausible[0] <= _canonical(r) <= plausible[1]
    ]


def test_expected_evidence_recomputed_from_data(scenarios: list[Scenario]) -> None:
    ck_fallback = VS.thresholds["ck"]
    for s in scenarios:
        e, ev = s.expected, s.expected["evidence"]
        temps = [_canonical(o) for o in _final(s, "body-temperature", 72)]
        febrile = [t for t in temps if t > VS.thresholds["hyperthermia"]["threshold_cel"]]
        assert ("hyperthermia" in e["criteria"]) == (len(febrile) >= 2), s.id
        if "tmax_cel" in ev:
            assert round(max(temps), 1) == ev["tmax_cel"], s.id
        cks = _final(s, "creatine-kinase", 24 * 5)
        if cks:
            peak = max(cks, key=_canonical)
            if peak.get("referenceRange"):
                high = peak["referenceRange"][0]["high"]
                uln = VS.observation("2157-6").conversions[_ucum(high["code"]) or ""].apply(high["value"])  # type: ignore[union-attr]
            else:
                gender = next(r for r in s.resources if r["resourceType"] == "Patient")["gender"]
                uln = ck_fallback.get(f"uln_fallback_{gender}", ck_fallback["uln_fallback_unknown"])
            met = _canonical(peak) >= ck_fallback["uln_multiple"] * uln
            assert ("ck" in e["criteria"]) == met, s.id
            if "ck_peak_u_l" in ev:
                assert round(_canonical(peak)) == ev["ck_peak_u_l"] and round(uln) == ev["ck_uln_u_l"], s.id
        else:
            assert "ck" not in e["criteria"] and "ck_peak_u_l" not in ev, s.id
        irons = [_canonical(o) for o in _final(s, "serum-iron", 24 * 5)]
        if "iron_min_umol_l" in ev:
            assert round(min(irons), 1) == ev["iron_min_umol_l"], s.id
        wbcs = [_canonical(o) for o in _final(s, "wbc", 24 * 5)]
        if "wbc_max_10e9_l" in ev:
            assert round(max(wbcs), 1) == ev["wbc_max_10e9_l"], s.id


# ---------------------------------------------------------------------------------------------------
# rebase
# ---------------------------------------------------------------------------------------------------


def test_rebase_shifts_datetimes_exactly_and_keeps_zones() -> None:
    delta = timedelta(days=12, hours=3, minutes=7, seconds=5)
    doc = {
        "effectiveDateTime": "2026-11-23T02:00:00Z",
        "issued": "2026-11-23T03:00:00.123+02:00",
        "period": {"start": "2026-11-20T23:30:00-05:00"},
        "list": ["2026-11-24T12:00:00Z", "not a date", "2026-11"],
        "value": 38.4,
    }
    out = rebase(doc, delta)
    assert out["effectiveDateTime"] == "2026-12-05T05:07:05Z"
    assert out["issued"].endswith(".123+02:00")
    assert out["period"]["start"].endswith("-05:00")
    for old, new in [(doc["effectiveDateTime"], out["effectiveDateTime"]), (doc["issued"], out["issued"]),
                     (doc["period"]["start"], out["period"]["start"]), (doc["list"][0], out["list"][0])]:
        assert datetime.fromisoformat(new.replace("Z", "+00:00")) - datetime.fromisoformat(
            old.replace("Z", "+00:00")) == delta
    assert out["list"][1:] == ["not a date", "2026-11"] and out["value"] == 38.4
    assert doc["effectiveDateTime"] == "2026-11-23T02:00:00Z"  # input untouched (deep copy)
    assert out["period"] is not doc["period"]


def test_rebase_dates_birthdate_and_deceased() -> None:
    doc = {"birthDate": "1984-03-02", "deceasedDateTime": "2026-11-20T10:00:00Z", "authoredOn": "2026-11-24",
           "onsetDateTime": "2024-11-24T12:00:00Z"}
    out = rebase(doc, timedelta(days=3))
    assert out == {"birthDate": "1984-03-02", "deceasedDateTime": "2026-11-20T10:00:00Z",
                   "authoredOn": "2026-11-27", "onsetDateTime": "2024-11-27T12:00:00Z"}
    assert rebase(doc, timedelta(days=-1))["authoredOn"] == "2026-11-23"
    # a date follows the day its noon lands on: the anchor date always becomes the date of ANCHOR + delta
    for delta in (timedelta(hours=11), timedelta(hours=13), timedelta(days=5, hours=-13)):
        assert rebase("2026-11-24", delta) == (ANCHOR + delta).date().isoformat()


def test_rebase_subsecond_delta_is_kept_and_delta_to() -> None:
    out = rebase("2026-11-24T12:00:00Z", timedelta(microseconds=250000))
    assert out == "2026-11-24T12:00:00.25Z"
    now = datetime(2027, 1, 2, 8, 30, 15, 600000, tzinfo=UTC)
    assert delta_to(now) == timedelta(days=38, hours=20, minutes=30, seconds=16)
    with pytest.raises(ValueError):
        delta_to(datetime(2027, 1, 1))  # naive on purpose


def test_rebase_moves_a_whole_scenario() -> None:
    s = load_scenario("classic-nms")
    delta = timedelta(days=40, hours=5)
    moved = rebase(s.bundle, delta)
    before = [e["resource"] for e in s.bundle["entry"]]
    after = [e["resource"] for e in moved["entry"]]
    for old, new in zip(before, after, strict=True):
        if "effectiveDateTime" in old:
            assert _time(new["effectiveDateTime"]) - _time(old["effectiveDateTime"]) == delta
        if old["resourceType"] == "Patient":
            assert new["birthDate"] == old["birthDate"]
    req = rebase(s.request, delta)
    assert req["hookInstance"] == s.request["hookInstance"]
    assert req["context"]["draftOrders"]["entry"][0]["resource"]["authoredOn"] == "2027-01-03"


# ---------------------------------------------------------------------------------------------------
# search and fill_prefetch
# ---------------------------------------------------------------------------------------------------


def _obs(rid: str, code: str, when: str | None, *, system: str = LOINC, status: str = "final",
         patient: str = "p1") -> dict[str, Any]:
    r: dict[str, Any] = {"resourceType": "Observation", "id": rid, "status": status,
                         "code": {"coding": [{"system": system, "code": code}]},
                         "subject": {"reference": f"Patient/{patient}"}}
    if when:
        r["effectiveDateTime"] = when
    return r


RESOURCES: list[dict[str, Any]] = [
    {"resourceType": "Patient", "id": "p1"},
    _obs("t1", "8310-5", "2026-11-22T10:00:00Z"),
    _obs("t2", "8331-1", "2026-11-23T10:00:00+02:00"),
    _obs("t3", "8310-5", "2026-11-23T10:00:00Z"),
    _obs("t4", "8310-5", "2026-11-23T10:00:00Z", status="entered-in-error"),
    _obs("t5", "8310-5", None),
    _obs("x1", "8310-5", "2026-11-24T10:00:00Z", system="http://example.org/local"),
    _obs("o1", "8310-5", "2026-11-24T11:00:00Z", patient="p2"),
    {"resourceType": "Observation", "id": "p1", "status": "final", "code": {"coding": []},
     "subject": {"reference": "Patient/p1"}, "effectivePeriod": {"start": "2026-11-21T00:00:00Z"}},
    {"resourceType": "AllergyIntolerance", "id": "a1", "patient": {"reference": "Patient/p1"}},
    {"resourceType": "MedicationRequest", "id": "m1", "status": "active", "subject": {"reference": "Patient/p1"},
     "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "5093"}]}},
]


def _ids(bundle: dict[str, Any] | None) -> list[str]:
    assert bundle is not None and bundle["type"] == "searchset"
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


def test_search_read_hit_and_miss() -> None:
    assert search(RESOURCES, "Patient/p1") == {"resourceType": "Patient", "id": "p1"}
    assert search(RESOURCES, "Patient/nope") is None
    assert search(RESOURCES, "Observation/p1")["resourceType"] == "Observation"  # type: ignore[index]
    hit = search(RESOURCES, "Patient/p1")
    assert hit is not None and hit is not RESOURCES[0]  # a copy


def test_search_code_or_list_status_and_patient() -> None:
    url = f"Observation?patient=p1&code={LOINC}|8331-1,{LOINC}|8310-5"
    assert sorted(_ids(search(RESOURCES, url))) == ["t1", "t2", "t3", "t4", "t5"]
    assert _ids(search(RESOURCES, f"Observation?patient=p1&code={LOINC}|8331-1")) == ["t2"]
    assert _ids(search(RESOURCES, "Observation?patient=p1&code=http://example.org/local|8310-5")) == ["x1"]
    assert "x1" in _ids(search(RESOURCES, "Observation?patient=p1&code=8310-5"))  # token without system
    assert "t4" not in _ids(search(RESOURCES, f"Observation?patient=p1&code={LOINC}|8310-5&status=final,amended"))
    assert _ids(search(RESOURCES, "Observation?patient=Patient/p2")) == ["o1"]
    assert _ids(search(RESOURCES, "AllergyIntolerance?patient=p1&_count=100")) == ["a1"]
    assert _ids(search(RESOURCES, f"MedicationRequest?patient=p1&code={RXNORM}|5093&status=active")) == ["m1"]
    assert _ids(search(RESOURCES, "MedicationRequest?patient=p1&status=stopped")) == []


def test_search_sort_newest_first_stable_and_count() -> None:
    url = f"Observation?patient=p1&code={LOINC}|8310-5,{LOINC}|8331-1&_sort=-date"
    # t3 and t4 share a time: original order kept; t2 (10:00+02:00 = 08:00Z) is older than t3; undated last
    assert _ids(search(RESOURCES, url)) == ["t3", "t4", "t2", "t1", "t5"]
    assert _ids(search(RESOURCES, "Observation?patient=p1&_sort=date"))[:2] == ["p1", "t1"]  # effectivePeriod
    page = search(RESOURCES, url + "&_count=2")
    assert page is not None and _ids(page) == ["t3", "t4"] and page["total"] == 5
    assert page["entry"][0] == {"fullUrl": "Observation/t3", "resource": page["entry"][0]["resource"],
                                "search": {"mode": "match"}}


def test_search_ignores_unknown_params_and_returns_empty_bundles() -> None:
    assert _ids(search(RESOURCES, "Observation?patient=p2&date=ge2026-01-01&_include=x")) == ["o1"]
    empty = search(RESOURCES, "Condition?patient=p1&code=http://snomed.info/sct|15244003")
    assert empty == {"resourceType": "Bundle", "type": "searchset", "total": 0}
    with pytest.raises(ValueError):
        search(RESOURCES, "Observation/t1/_history/1")


def test_fill_prefetch() -> None:
    templates = {
        "patient": "Patient/{{context.patientId}}",
        "temps": "Observation?patient={{context.patientId}}&code=http://loinc.org|8310-5&_sort=-date&_count=1",
        "conditions": "Condition?patient={{context.patientId}}",
        "user": "Practitioner/{{userPractitionerId}}",
    }
    out = fill_prefetch(RESOURCES, templates, "p1")
    assert out["patient"] == {"resourceType": "Patient", "id": "p1"}
    assert _ids(out["temps"]) == ["t3"] and out["temps"]["total"] == 4
    assert out["conditions"] == {"resourceType": "Bundle", "type": "searchset", "total": 0}
    assert "user" not in out  # unresolved token: key omitted, as the reference client does
    missing = fill_prefetch(RESOURCES, templates, "nobody")
    assert missing["patient"] is None and missing["temps"]["total"] == 0


def test_fill_prefetch_with_service_templates_on_a_scenario() -> None:
    s = load_scenario("classic-nms")
    out = fill_prefetch(s.resources, prefetch_templates(), s.patient_id)
    temps = out["temperature"]["entry"]
    times = [_time(e["resource"]["effectiveDateTime"]) for e in temps]
    assert times == sorted(times, reverse=True)
    assert all(e["resource"]["code"]["coding"][0]["code"] == "8310-5" for e in temps)
    labs = [e["resource"]["code"]["coding"][0]["code"] for e in out["labs"]["entry"]]
    assert "2157-6" in labs and "14798-3" in labs
    assert out["conditions"]["total"] == 0
    rx = load_scenario("past-nms-rechallenge")
    history = fill_prefetch(rx.resources, prefetch_templates(), rx.patient_id)
    assert history["conditions"]["total"] == 1 and history["allergies"]["total"] == 1
