"""A site code map read the same way by the plain-JSON fast path and the R4B model path, with its text guard."""

from __future__ import annotations

import copy
from typing import Any

from cds_service.clinical.site import SiteKnowledge
from cds_service.clinical.valuesets import CodeMap, using
from cds_service.fhir import observations as fhir_observations
from cds_service.fhir.extract import Extracted
from cds_service.fhir.plain_json import plain_observation

LOINC = "http://loinc.org"
SITE = SiteKnowledge("test+site", code_maps=(
    CodeMap(LOINC, "32673-6", "creatine-kinase", "Kreatinkinase", "U/L"),
    CodeMap("urn:oid:1.2.3", "TEMP", "body-temperature", None, "Cel"),
))


def _observation(system: str, code: str, text: str | None, value: float, unit: str | None) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation", "id": f"o-{code}", "status": "final",
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": "Patient/p"}, "effectiveDateTime": "2026-11-24T10:00:00Z",
        "valueQuantity": {"value": value, **({"unit": unit, "code": unit, "system": "http://unitsofmeasure.org"}
                                             if unit else {})},
    }
    if text is not None:
        obs["code"]["text"] = text
    return obs


def _both(raw: dict[str, Any]) -> tuple[Any, Any]:
    wanted = fhir_observations.relevant_loinc()
    out = Extracted()
    fhir_observations.parsed_observation(copy.deepcopy(raw), wanted, out)
    return plain_observation(raw, wanted), out.observations


def test_plain_and_model_paths_read_a_site_code_alike() -> None:
    ck = _observation(LOINC, "32673-6", "Kreatinkinase", 24000, "U/L")
    local = _observation("urn:oid:1.2.3", "TEMP", None, 39.1, None)
    other_text = _observation(LOINC, "32673-6", "CK-MB", 30, "U/L")
    with using(SITE):
        wanted = fhir_observations.relevant_loinc()
        assert all(fhir_observations.has_code(r, wanted) for r in (ck, local, other_text))
        for raw, key in ((ck, f"{LOINC}|32673-6|kreatinkinase"), (local, "urn:oid:1.2.3|TEMP"),
                         (other_text, None)):
            plain, parsed = _both(raw)
            assert plain == parsed
            assert (key in plain[0].codes) if key else all("|" not in c for c in plain[0].codes)
    without = fhir_observations.relevant_loinc()
    assert not fhir_observations.has_code(local, without)
    plain, parsed = _both(ck)
    assert plain == parsed and plain is not None and plain[0].codes == ("32673-6",)


def test_the_core_reads_a_mapped_value_without_a_unit_in_the_maps_unit() -> None:
    from datetime import UTC, datetime

    from cds_service.clinical.criteria import normalise
    from cds_service.clinical.model import ObservationInput
    from cds_service.clinical.valuesets import load

    now = datetime(2026, 11, 24, 12, tzinfo=UTC)
    readings = [ObservationInput("Observation/t", "final", ("urn:oid:1.2.3|TEMP",), 39.1, None, now),
                ObservationInput("Observation/c", "final", (f"{LOINC}|32673-6|kreatinkinase",), 24000, None, now)]
    series, _ = normalise(readings, now, load(SITE))
    assert [(r.value, r.unit) for r in series["body-temperature"]] == [(39.1, "Cel")]
    assert [(r.value, r.unit) for r in series["creatine-kinase"]] == [(24000, "U/L")]
    assert normalise(readings, now, load())[0] == {}  # without the site's knowledge neither is read
