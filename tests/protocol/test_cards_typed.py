"""Cards are built through the typed wire models (:mod:`cds_service.protocol.models`) and written with
``exclude_none``. When they replaced the dict-and-prune builder, the served bytes were compared with the old
builder's for every fixture scenario in all three hooks and found identical; what that builder guaranteed is
kept here: no null or empty member anywhere, members in the order the models declare them."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient
from pydantic import BaseModel

from cds_service.config import Settings
from cds_service.devtools import fixtures
from cds_service.protocol import models
from tests.conftest import make_settings

SCENARIOS = fixtures.load_scenarios()


@pytest.fixture
def settings() -> Settings:
    return make_settings(fixed_now=fixtures.ANCHOR)


def _empty_members(value: Any, path: str = "") -> list[str]:
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    else:
        return []
    out = []
    for key, item in items:
        where = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}"
        if item is None or item == "" or item == [] or item == {}:
            out.append(where)
        out += _empty_members(item, where)
    return out


def _in_declared_order(value: dict[str, Any], model: type[BaseModel]) -> bool:
    declared = list(model.model_fields)
    return [declared.index(k) for k in value] == sorted(declared.index(k) for k in value)


@pytest.mark.parametrize("hook", fixtures.HOOKS)
def test_cards_have_no_empty_member_and_follow_the_model_order(client: FlaskClient, hook: str) -> None:
    cards_seen = 0
    actions: set[str] = set()
    for scenario in SCENARIOS:
        answer = client.post(f"/cds-services/nms-{hook}", json=scenario.request_for(hook)).get_json()
        for card in answer["cards"]:
            assert _empty_members(card) == [], scenario.id
            cards_seen += 1
            assert _in_declared_order(card, models.Card), (scenario.id, list(card))
            for suggestion in card.get("suggestions", []):
                assert _in_declared_order(suggestion, models.Suggestion), scenario.id
                for action in suggestion["actions"]:
                    assert _in_declared_order(action, models.Action), scenario.id
                    actions.add(action["type"])
    assert cards_seen >= 30  # real cards were seen, not only empty answers
    assert actions >= ({"create", "update"} if hook == "patient-view" else {"delete", "create"}), actions


def test_a_record_resource_is_written_without_null_or_empty_values() -> None:
    """An ``update`` action carries the FHIR server's copy of an order: FHIR JSON has no null or empty values."""
    held = {"resourceType": "MedicationRequest", "id": "m1", "status": "on-hold", "note": [], "dosageInstruction":
            [{"text": "", "timing": {}}, {"text": "5 mg"}], "reasonCode": None}
    action = models.Action(type="update", description="hold", resource=models.FhirResource.model_validate(held))
    assert action.model_dump(exclude_none=True) == {
        "type": "update", "description": "hold",
        "resource": {"resourceType": "MedicationRequest", "id": "m1", "status": "on-hold",
                     "dosageInstruction": [{"text": "5 mg"}]}}
