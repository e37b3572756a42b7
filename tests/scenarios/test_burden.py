"""``make burden`` building blocks: the mimic generator is deterministic, moments and snapshots follow their
definition, and the hard mimics with a haloperidol draft give no warning or critical card (prefetch path; the
full corpus through the local FHIR server runs in ``make burden``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from bench import burden
from bench.burden_records import KINDS, records


def test_generator_is_deterministic_and_covers_every_kind() -> None:
    first, second = records(), records()
    assert json.dumps(first) == json.dumps(second)
    assert {r["kind"] for r in first} == set(KINDS) and len(KINDS) == 7


def test_moments_are_episode_ends_and_the_last_observation() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)

    def temp(hours: float, value: float) -> dict[str, object]:
        return {"resourceType": "Observation", "code": {"coding": [{"code": "8310-5"}]},
                "effectiveDateTime": (t0 + timedelta(hours=hours)).isoformat(),
                "valueQuantity": {"value": value, "code": "Cel"}}

    found = burden.moments([temp(0, 38.5), temp(20, 38.6), temp(100, 39.0), temp(110, 36.8)])
    assert found == [("after-febrile-episode", t0 + timedelta(hours=21)),
                     ("after-febrile-episode", t0 + timedelta(hours=101)),
                     ("after-last-observation", t0 + timedelta(hours=111))]


def test_snapshot_drops_the_future_and_reopens_later_resolved_conditions() -> None:
    now = datetime(2026, 1, 10, tzinfo=UTC)
    condition = {"resourceType": "Condition", "onsetDateTime": "2026-01-05T00:00:00Z",
                 "abatementDateTime": "2026-01-20T00:00:00Z",
                 "clinicalStatus": {"coding": [{"code": "resolved"}]}}
    later = {"resourceType": "Observation", "effectiveDateTime": "2026-01-11T00:00:00Z"}
    (kept,) = burden.snapshot([condition, later], now)
    assert "abatementDateTime" not in kept and kept["clinicalStatus"]["coding"][0]["code"] == "active"


def test_hard_mimics_with_a_draft_give_no_warning_or_critical() -> None:
    result = burden.run(limit=None, server=False, corpus=records())
    assert result["targets"]["critical_or_warning_with_draft_only_exposure"] == 0
    assert result["targets"]["cards_using_another_patients_data"] == 0
    assert result["targets"]["non_200_answers"] == 0
    assert result["moments"] >= 2 * len(KINDS)
