"""What a full hook call leaves in the logs: hookInstance and a request id; never a token or patient data.

The call carries a CDS-client JWT and a FHIR access token; the prefetched Patient and the FHIR server's
answers carry the patient's name; part of the prefetch is absent so the service queries the (mocked) FHIR
server with the access token. Everything logged at DEBUG is captured twice: as log records (``caplog``,
all attributes) and as the JSON lines an operator would see.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import responses
from flask import Flask

from cds_service.app import create_app
from cds_service.logs import JsonFormatter, RequestContextFilter
from tests.conftest import FHIR_BASE, make_settings
from tests.helpers.jwt_helpers import ec_key, jwks, make_token, write_trusted_clients

BASE = "https://cds.example.org"
ISS = "https://ehr.example.org"
NOW = 1_795_000_000.0
SERVICE = "/cds-services/nms-order-sign"
PATIENT_ID = "pat-7f3e9c21"
FAMILY, GIVEN = "Vandermolen", "Theodora"
ACCESS_TOKEN = "at-2b9d6e4f-very-secret-fhir-token"
HOOK_INSTANCE = "5a0c4a5e-1f0e-4d55-9a3b-7c0f7a1e2d44"
REQUEST_ID = "req-privacy-0001"


def patient() -> dict[str, Any]:
    return {"resourceType": "Patient", "id": PATIENT_ID, "gender": "female", "birthDate": "1961-04-02",
            "name": [{"family": FAMILY, "given": [GIVEN], "text": f"{GIVEN} {FAMILY}"}],
            "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "MRN-99812"}]}


def observation(i: int, code: str, value: float, unit: str, when: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": f"obs-{i}", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": f"Patient/{PATIENT_ID}", "display": f"{GIVEN} {FAMILY}"},
            "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}


def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def hook_request(*, temperature: bool = True) -> dict[str, Any]:
    draft = {"resourceType": "MedicationRequest", "id": "draft-1", "status": "draft", "intent": "order",
             "subject": {"reference": f"Patient/{PATIENT_ID}", "display": f"{GIVEN} {FAMILY}"},
             "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                       "code": "5093", "display": "haloperidol"}]}}
    prefetch: dict[str, Any] = {"patient": patient()}
    if temperature:
        prefetch["temperature"] = bundle(observation(1, "8310-5", 39.6, "Cel", "2026-11-24T08:00:00Z"))
    return {
        "hook": "order-sign",
        "hookInstance": HOOK_INSTANCE,
        "fhirServer": FHIR_BASE,
        "fhirAuthorization": {"access_token": ACCESS_TOKEN, "token_type": "Bearer", "expires_in": 300,
                              "scope": "patient/*.read", "subject": "nms-cds"},
        "context": {"userId": "Practitioner/example", "patientId": PATIENT_ID,
                    "draftOrders": {"resourceType": "Bundle", "entry": [{"resource": draft}]}},
        # patient (and temperature) prefetched; medications, vitals, labs, conditions, allergies absent
        "prefetch": prefetch,
    }


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    key = ec_key("privacy-es384")
    path = write_trusted_clients(tmp_path / "trusted.json", [{"iss": ISS, "jwks": jwks(key)}])
    application = create_app(make_settings(auth="jwt", environment="production", public_base_url=BASE,
                                           trusted_clients=path, log_level="DEBUG"))
    application.extensions["nms_cds"].authenticator.clock = lambda: NOW
    yield application
    application.extensions["nms_cds"].close()


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """The JSON lines the service writes, as the operator's log collector would receive them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestContextFilter())
    logger = logging.getLogger("cds_service")
    logger.addHandler(handler)
    yield stream
    logger.removeHandler(handler)


def everything_logged(caplog: pytest.LogCaptureFixture, stream: io.StringIO) -> str:
    records = "\n".join(r.getMessage() + " " + repr(r.args) + " " + repr(r.__dict__) for r in caplog.records)
    return records + "\n" + stream.getvalue()


def secrets(jwt_token: str) -> dict[str, str]:
    return {"jwt": jwt_token, "jwt-signature": jwt_token.rsplit(".", 1)[1], "access token": ACCESS_TOKEN,
            "family name": FAMILY, "given name": GIVEN, "MRN": "MRN-99812", "birth date": "1961-04-02"}


def mock_fhir(rsps: responses.RequestsMock, *, fail: bool = False) -> None:
    if fail:
        outcome = {"resourceType": "OperationOutcome", "issue": [{
            "severity": "error", "code": "exception",
            "diagnostics": f"search failed for {GIVEN} {FAMILY} (MRN-99812) token {ACCESS_TOKEN}"}]}
        rsps.get(re.compile(re.escape(FHIR_BASE) + r"/.*"), status=500, json=outcome)
        return
    rsps.get(re.compile(re.escape(FHIR_BASE) + r"/MedicationRequest\?.*"), json=bundle())
    rsps.get(re.compile(re.escape(FHIR_BASE) + r"/Observation\?.*"),
             json=bundle(observation(2, "2157-6", 8800, "U/L", "2026-11-24T09:00:00Z"),
                         observation(3, "8867-4", 128, "/min", "2026-11-24T09:00:00Z")))
    rsps.get(re.compile(re.escape(FHIR_BASE) + r"/(Condition|AllergyIntolerance)\?.*"), json=bundle())


@pytest.mark.parametrize("fail", [False, True], ids=["answered", "fhir-server-fails-echoing-the-patient"])
def test_a_full_hook_call_logs_no_token_and_no_patient_data(app: Flask, caplog: pytest.LogCaptureFixture,
                                                             json_lines: io.StringIO, fail: bool) -> None:
    caplog.set_level(logging.DEBUG)
    jwt_token = make_token(ec_key("privacy-es384"), iss=ISS, aud=BASE + SERVICE, now=NOW)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        mock_fhir(rsps, fail=fail)
        resp = app.test_client().post(SERVICE, json=hook_request(temperature=not fail),
                                      headers={"Authorization": f"Bearer {jwt_token}", "X-Request-Id": REQUEST_ID})
        fhir_calls = [c.request for c in rsps.calls]
    assert resp.status_code == (412 if fail else 200), resp.get_json()
    # the service did query the FHIR server, with the access token, for the absent keys only
    assert fhir_calls and all(r.headers["Authorization"] == f"Bearer {ACCESS_TOKEN}" for r in fhir_calls)
    assert not any("/Patient/" in (r.url or "") for r in fhir_calls)

    text = everything_logged(caplog, json_lines)
    for what, secret in secrets(jwt_token).items():
        assert secret not in text, f"the {what} was logged"
    assert PATIENT_ID not in text  # NMS_CDS_LOG_PATIENT_IDS is off

    lines = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    request_lines = [line for line in lines if line.get("request_id") == REQUEST_ID]
    assert request_lines, lines
    assert any(line.get("hook_instance") == HOOK_INSTANCE for line in request_lines)
    assert request_lines[-1]["event"] == "access"  # the access line closes every request
    final = [line for line in request_lines if line["event"] != "access"][-1]
    assert final["event"] == ("precondition-failed" if fail else "hook-call")
    assert final["hook_instance"] == HOOK_INSTANCE
    assert resp.headers["X-Request-Id"] == REQUEST_ID


def test_the_request_id_is_generated_when_the_client_sends_none(app: Flask, caplog: pytest.LogCaptureFixture,
                                                                json_lines: io.StringIO) -> None:
    caplog.set_level(logging.DEBUG)
    jwt_token = make_token(ec_key("privacy-es384"), iss=ISS, aud=BASE + SERVICE, now=NOW)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        mock_fhir(rsps)
        resp = app.test_client().post(SERVICE, json=hook_request(), headers={"Authorization": f"Bearer {jwt_token}"})
    assert resp.status_code == 200
    request_id = resp.headers["X-Request-Id"]
    assert request_id
    hook_lines = [json.loads(line) for line in json_lines.getvalue().splitlines() if '"hook-call"' in line]
    assert hook_lines and hook_lines[-1]["request_id"] == request_id
    assert hook_lines[-1]["hook_instance"] == HOOK_INSTANCE


def test_patient_ids_are_logged_only_when_the_operator_opts_in(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                               json_lines: io.StringIO) -> None:
    caplog.set_level(logging.DEBUG)
    app = create_app(make_settings(auth="off", log_patient_ids=True, log_level="DEBUG"))
    try:
        with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
            mock_fhir(rsps)
            resp = app.test_client().post(SERVICE, json=hook_request())
    finally:
        app.extensions["nms_cds"].close()
    assert resp.status_code == 200
    text = json_lines.getvalue()
    assert f'"patient_id":"{PATIENT_ID}"' in text
    for secret in (ACCESS_TOKEN, FAMILY, GIVEN, "MRN-99812"):
        assert secret not in text


def test_rejected_tokens_are_not_logged(app: Flask, caplog: pytest.LogCaptureFixture,
                                        json_lines: io.StringIO) -> None:
    caplog.set_level(logging.DEBUG)
    wrong_aud = make_token(ec_key("privacy-es384"), iss=ISS, aud=BASE + "/cds-services", now=NOW)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        resp = app.test_client().post(SERVICE, json=hook_request(), headers={"Authorization": f"Bearer {wrong_aud}"})
        assert len(rsps.calls) == 0
    assert resp.status_code == 401
    text = everything_logged(caplog, json_lines)
    assert wrong_aud not in text and wrong_aud.rsplit(".", 1)[1] not in text
    assert ACCESS_TOKEN not in text and FAMILY not in text
    failure = [json.loads(line) for line in json_lines.getvalue().splitlines() if '"auth-failed"' in line]
    assert failure and failure[-1]["iss"] == ISS and failure[-1]["jti"] and failure[-1]["reason"]


DIAGNOSIS = "neuroleptic malignant syndrome suspected"


@pytest.mark.parametrize("answer", [
    {"resourceType": f"{GIVEN} {FAMILY} MRN-99812 {DIAGNOSIS} {ACCESS_TOKEN}" * 20},
    {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Observation", "id": "x"}}],
     "link": [{"relation": "next", "url": f"{FHIR_BASE}/{GIVEN}-{FAMILY}/..;/MRN-99812"}]},
    {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": f"{FAMILY} MRN-99812",
                                                    "diagnostics": DIAGNOSIS, "details": {"text": GIVEN}}]},
], ids=["resource-type-echoes-the-patient", "next-link-echoes-the-patient", "outcome-code-echoes-the-patient"])
def test_server_free_text_reaches_neither_the_412_nor_the_logs(app: Flask, caplog: pytest.LogCaptureFixture,
                                                               json_lines: io.StringIO,
                                                               answer: dict[str, Any]) -> None:
    """The red-team run: a FHIR answer whose ``resourceType`` held a name, an MRN, a diagnosis and a token was
    copied into the 412 ``diagnostics`` and the log line (6.7 kB, three times). Only fixed texts and codes now."""
    caplog.set_level(logging.DEBUG)
    jwt_token = make_token(ec_key("privacy-es384"), iss=ISS, aud=BASE + SERVICE, now=NOW)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.get(re.compile(re.escape(FHIR_BASE) + r"/.*"), json=answer)
        resp = app.test_client().post(SERVICE, json=hook_request(temperature=False),
                                      headers={"Authorization": f"Bearer {jwt_token}", "X-Request-Id": REQUEST_ID})
    body = resp.get_data(as_text=True)
    text = everything_logged(caplog, json_lines)
    for secret in (*secrets(jwt_token).values(), DIAGNOSIS, "malignant", PATIENT_ID):
        assert secret not in body, f"{secret!r} in the answer"
        assert secret not in text, f"{secret!r} in the logs"
    if resp.status_code == 412:
        diagnostics = resp.get_json()["issue"][0]["diagnostics"]
        assert len(diagnostics) < 1000, diagnostics
    lines = json_lines.getvalue().splitlines()
    assert all(len(line) < 2000 for line in lines), max(lines, key=len)
