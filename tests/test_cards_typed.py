"""Cards built through the typed wire models write the same bytes as the dict-and-prune builder did, for every
fixture scenario in all three hooks (the served answer through Flask's JSON provider)."""

from __future__ import annotations

import pytest
from flask import Flask

from cds_service.clinical import assess
from cds_service.config import Settings
from cds_service.devtools import fixtures
from cds_service.protocol.parse import parse_hook_request
from cds_service.services import cards, order_select, order_sign, patient_view
from cds_service.services.engine import CallReport
from tests.conftest import make_settings

SCENARIOS = fixtures.load_scenarios()


@pytest.fixture
def settings() -> Settings:
    return make_settings(fixed_now=fixtures.ANCHOR)


@pytest.mark.parametrize("hook", fixtures.HOOKS)
def test_typed_cards_write_the_bytes_the_dict_builder_wrote(app: Flask, hook: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    service = next(s for s in app.extensions["nms_cds"].services.values() if s.hook == hook)
    engine, policy = service.engine, service.policy
    cards_seen = 0
    actions: set[str] = set()
    for scenario in SCENARIOS:
        req = parse_hook_request(scenario.request_for(hook), expected_hook=hook)
        gathered = engine.gather(policy, req, CallReport())
        a = assess(engine.extract(gathered, policy.exposure_drafts(req), req))
        typed = policy.cards(a, req, gathered)
        with monkeypatch.context() as m:
            for module in (order_select, order_sign, patient_view):
                m.setattr(module, "build_cards", cards.legacy_build_cards)
            m.setattr(patient_view, "hold_suggestions", patient_view.legacy_hold_suggestions)
            legacy = policy.cards(a, req, gathered)
        assert app.json.dumps({"cards": typed}) == app.json.dumps({"cards": legacy}), (scenario.id, hook)
        cards_seen += len(typed)
        actions |= {action["type"] for card in typed for s in card.get("suggestions", []) for action in s["actions"]}
    assert cards_seen >= 30  # the comparison saw real cards, not only empty answers
    assert actions >= ({"create", "update"} if hook == "patient-view" else {"delete", "create"}), actions
