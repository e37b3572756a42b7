"""The site file's checks (one line per problem naming the file and key), value-set additions and removals, and
the knowledge version in audit rows and /metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from cds_service.clinical.site import tables
from cds_service.clinical.valuesets import load
from cds_service.devtools import fixtures
from cds_service.errors import ConfigError
from cds_service.knowledge import load_knowledge
from tests.conftest import app_for, make_settings

LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"


def _problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "site.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_knowledge(path)
    assert all(line.startswith(f"{path}: ") or line.startswith("NMS_CDS_SITE_FILE=") for line in caught.value.problems)
    return [line.removeprefix(f"{path}: ") for line in caught.value.problems]


@pytest.mark.parametrize(("value", "ok"), [(2.0, True), (10, True), (1.9, False), (10.5, False), (0, False)])
def test_the_ck_multiple_stays_within_its_bounds(tmp_path: Path, value: float, ok: bool) -> None:
    text = f"[thresholds.ck]\nuln_multiple = {value}\n"
    if ok:
        path = tmp_path / "site.toml"
        path.write_text(text, encoding="utf-8")
        assert load(load_knowledge(path).site).thresholds["ck"]["uln_multiple"] == value
    else:
        (line,) = _problems(tmp_path, text)
        assert line.startswith("thresholds.ck.uln_multiple: ") and "outside the documented safe bounds 2-10" in line


def test_every_bound_holds_its_default_and_every_problem_is_one_line(tmp_path: Path) -> None:
    th = load().thresholds
    for section, values in th.items():
        for key, (low, high) in (values.get("bounds", {}) if isinstance(values, dict) else {}).items():
            assert low <= values[key] <= high, (section, key)
    problems = _problems(tmp_path, """
[thresholds.window]
acute_hours = 12
lab_days = 4.5
[thresholds.ck]
points = 30
[thresholds.limits]
readings_per_concept = 10
[thresholds.hyperthermia]
extreme_cel = 41.0
extreme_single_cel = 40.5
""")
    assert [p.split(": ")[0] for p in problems] == [
        "thresholds.window.acute_hours", "thresholds.window.lab_days", "thresholds.ck.points", "thresholds.limits",
        "thresholds.hyperthermia.extreme_single_cel"]
    assert "not a whole number" in problems[1] and "not a threshold a site may set" in problems[2]


def test_unknown_concepts_value_sets_units_and_keys_are_refused(tmp_path: Path) -> None:
    problems = _problems(tmp_path, f"""
[[code_map]]
system = "urn:oid:1.2.3"
code = "CK"
concept = "creatinkinase"
[[code_map]]
system = "urn:oid:1.2.3"
code = "T"
concept = "body-temperature"
unit = "K"
[[code_map]]
system = "{LOINC}"
code = "2157-6"
concept = "creatine-kinase"
[valuesets."observation:creatin-kinase"]
add = [{{ system = "{LOINC}", code = "1-1" }}]
[valuesets."drug:sga"]
remove = [{{ system = "{RXNORM}", code = "0000" }}]
""")
    assert problems[0].startswith("valuesets.\"observation:creatin-kinase\": unknown value set")
    assert "did you mean 'observation:creatine-kinase'" in problems[0]
    assert problems[1].startswith('valuesets."drug:sga".remove[0]: ') and "is not in drug:sga" in problems[1]
    assert problems[2].startswith("code_map[0].concept: unknown concept 'creatinkinase'")
    assert problems[3].startswith("code_map[1].unit: 'K' is not a unit of body-temperature")
    assert problems[4].startswith("code_map[2]: LOINC 2157-6 is already read as creatine-kinase")
    (extra,) = _problems(tmp_path, "[thresholds.ck]\nuln_multiple = 5\n[other]\nx = 1\n")
    assert extra == "other: unknown key (not part of the site file format; see docs/site-file.md)"
    (text,) = _problems(tmp_path, '[thresholds.ck]\nuln_multiple = "5"\n')
    assert text.startswith("thresholds.ck.uln_multiple: ")
    (syntax,) = _problems(tmp_path, "[thresholds.ck\n")
    assert syntax.startswith("not a valid UTF-8 TOML file")


def test_value_set_additions_and_removals(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(f"""
[valuesets."observation:body-temperature"]
remove = [{{ system = "{LOINC}", code = "8328-7" }}]
[valuesets."drug:sga"]
add = [{{ system = "{RXNORM}", code = "99999001", display = "local olanzapine product", ingredient = "olanzapine" }}]
[valuesets."condition:nms"]
add = [{{ system = "urn:oid:1.2.276.0.76.5.1", code = "NMS-LOCAL", display = "Malignes neuroleptisches Syndrom" }}]
[valuesets."other-drug:serotonergic"]
add = [{{ system = "{RXNORM}", code = "99999002", ingredient = "localtonin" }}]
""", encoding="utf-8")
    knowledge = load_knowledge(path)
    vs, default = load(knowledge.site), load()
    assert "8328-7" not in vs.observations_by_code and "8328-7" not in vs.codes_by_concept["body-temperature"]
    assert "8328-7" in default.observations_by_code  # the defaults are untouched
    drug = vs.drug("99999001")
    assert drug is not None and drug.role == "antagonist" and drug.ingredients == ("olanzapine",)
    assert vs.is_condition("nms", "urn:oid:1.2.276.0.76.5.1", "NMS-LOCAL")
    other = vs.other_drug(RXNORM, "99999002")
    assert other is not None and other.groups == frozenset({"serotonergic"})
    named = tables(vs)
    assert ("urn:oid:1.2.276.0.76.5.1", "NMS-LOCAL") in {(m.system, m.code) for m in named["condition:nms"]}
    assert [o.source.split(": ", 1)[1] for o in knowledge.overrides] == [
        'valuesets."observation:body-temperature".remove[0]', 'valuesets."drug:sga".add[0]',
        'valuesets."condition:nms".add[0]', 'valuesets."other-drug:serotonergic".add[0]']
    # a removal that leaves a SNOMED condition out
    path.write_text(f'[valuesets."condition:nms"]\nremove = [{{ system = "{SNOMED}", code = "15244003" }}]\n',
                    encoding="utf-8")
    assert load(load_knowledge(path).site).condition(SNOMED, "15244003") is None


def test_the_audit_row_and_metrics_carry_the_knowledge_version(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text("[thresholds.ck]\nuln_multiple = 5.0\n", encoding="utf-8")
    scenario = next(s for s in fixtures.load_scenarios() if s.id == "classic-nms")
    with app_for(make_settings(fixed_now=fixtures.ANCHOR, site_file=path)) as app:
        runtime = app.extensions["nms_cds"]
        client = app.test_client()
        response = client.post("/cds-services/nms-order-sign", json=scenario.request)
        (card,) = response.get_json()["cards"]
        version = runtime.knowledge.version
        assert version.split("+site.")[1] == __import__("hashlib").sha256(path.read_bytes()).hexdigest()[:12]
        assert card["source"]["label"].endswith(f"knowledge {version}")
        (row,) = runtime.store.report_rows(0).cards
        assert row.knowledge_version == version
        text = client.get("/metrics").get_data(as_text=True)
        assert f'nms_cds_knowledge_info{{version="{version}"}} 1.0' in text


DOC = Path(__file__).resolve().parents[2] / "docs" / "site-file.md"


def test_the_documented_bounds_table_is_the_data() -> None:
    th = load().thresholds
    rows = [f"| `{section}.{key}` | {values[key]:g} | {low:g} | {high:g} |"
            for section, values in th.items() if isinstance(values, dict)
            for key, (low, high) in values.get("bounds", {}).items()]
    text = DOC.read_text(encoding="utf-8")
    assert rows and all(row in text for row in rows)
    assert text.count("| `") == len(rows)


def test_the_documented_example_is_a_valid_site_file(tmp_path: Path) -> None:
    text = DOC.read_text(encoding="utf-8")
    example = text.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "site.toml"
    path.write_text(example, encoding="utf-8")
    knowledge = load_knowledge(path)
    assert len(knowledge.overrides) == 10
    assert load(knowledge.site).thresholds["ck"]["uln_multiple"] == 5.0


def test_changes_that_cannot_be_applied_together_are_refused(tmp_path: Path) -> None:
    codes = load().codes_by_concept["creatine-kinase"]
    removals = ", ".join(f'{{ system = "{LOINC}", code = "{c}" }}' for c in codes)
    (line,) = _problems(tmp_path, f"""
[valuesets."observation:creatine-kinase"]
remove = [{removals}]
[[code_map]]
system = "urn:oid:1.2.3"
code = "CK"
concept = "creatine-kinase"
""")
    assert line.startswith("the changes cannot be applied together: ") and "creatine-kinase" in line
