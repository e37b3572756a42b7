"""`nms-cds export-knowledge DIR`: valid R4 ValueSets and a Library; the ValueSets hold exactly the codes the rules
read (parity with the loaded tables, independently of the export's own listing), after the site file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.library import Library
from fhir.resources.R4B.valueset import ValueSet

from cds_service import cli
from cds_service.clinical.valuesets import ATC, LOINC, RXNORM, ValueSets, load
from cds_service.knowledge import load_knowledge

SITE = f'''
[[code_map]]
system = "{LOINC}"
code = "32673-6"
text = "Kreatinkinase"
concept = "creatine-kinase"
unit = "U/L"

[valuesets."observation:body-temperature"]
remove = [{{ system = "{LOINC}", code = "8328-7" }}]
'''


def _export(tmp_path: Path, *extra: str) -> dict[str, dict[str, Any]]:
    folder = tmp_path / "out"
    assert cli.main(["export-knowledge", str(folder), *extra]) == 0
    out = {}
    for path in sorted(folder.glob("*.json")):
        resource = json.loads(path.read_text(encoding="utf-8"))
        model = ValueSet if resource["resourceType"] == "ValueSet" else Library
        model.model_validate(resource)  # valid R4 (the project's FHIR models)
        assert path.name == f"{resource['resourceType']}-{resource['id']}.json"
        out[resource["id"]] = resource
    return out


def _codes(resource: dict[str, Any]) -> set[tuple[str, str]]:
    found = set()
    for include in resource["compose"]["include"]:
        found |= {(include["system"], c["code"]) for c in include.get("concept", [])}
        found |= {(include["system"], f["value"]) for f in include.get("filter", [])}
    return found


def _rules_tables(vs: ValueSets) -> dict[str, set[tuple[str, str]]]:
    """What the rules look codes up in, read straight from the loaded model."""
    want: dict[str, set[tuple[str, str]]] = {}
    for concept, codes in vs.codes_by_concept.items():
        for code in codes:
            system_code = (code.split("|")[0], code.split("|")[1]) if "|" in code else (LOINC, code)
            want.setdefault(f"observation-{concept}", set()).add(system_code)
    for code in vs.culture_codes:
        want.setdefault("observation-blood-culture", set()).add((LOINC, code))
    for (system, code), kind in vs.culture_results.items():
        want.setdefault(f"culture-result-{kind}", set()).add((system, code))
    for (system, code), c in vs.conditions.items():
        want.setdefault(f"condition-{c.concept}", set()).add((system, code))
    for (system, code), g in vs.cause_conditions.items():
        want.setdefault(f"cause-{g}", set()).add((system, code))
    for system, prefix, g in vs.cause_prefixes:
        want.setdefault(f"cause-{g}", set()).add((system, prefix))
    for (system, code), r in vs.routes.items():
        want.setdefault(f"route-{r}", set()).add((system, code))
    for code, d in vs.drugs_by_code.items():
        want.setdefault(f"drug-{d.drug_class}", set()).add((RXNORM, code))
    for code, d in vs.drugs_by_atc.items():
        want.setdefault(f"atc-{d.drug_class}", set()).add((ATC, code))
    for (system, code), o in vs.other_drugs.items():
        for g in o.groups:
            want.setdefault(f"other-drug-{g}", set()).add((system, code))
    return want


@pytest.mark.parametrize("with_site", [False, True])
def test_exported_value_sets_equal_the_tables_the_rules_use(tmp_path: Path, with_site: bool) -> None:
    extra: list[str] = []
    site = None
    if with_site:
        path = tmp_path / "site.toml"
        path.write_text(SITE, encoding="utf-8")
        extra = ["--site-file", str(path)]
        site = load_knowledge(path).site
    exported = _export(tmp_path, *extra)
    vs = load(site)
    leaves = {rid: r for rid, r in exported.items()
              if r["resourceType"] == "ValueSet" and any("system" in i for i in r["compose"]["include"])}
    assert {rid: _codes(r) for rid, r in leaves.items()} == _rules_tables(vs)
    ck = _codes(exported["observation-creatine-kinase"])
    assert ((LOINC, "32673-6") in ck) is with_site
    assert ((LOINC, "8328-7") in _codes(exported["observation-body-temperature"])) is not with_site
    version = vs.knowledge_version or "+default"
    assert all(r["version"].endswith(version) for r in exported.values())


def test_the_library_names_what_the_rules_read(tmp_path: Path) -> None:
    exported = _export(tmp_path)
    lib = exported["nms-cds-rules"]
    assert lib["type"]["coding"][0]["code"] == "logic-library"
    reads = lib["dataRequirement"]
    types = [r["type"] for r in reads]
    assert {"Patient", "Observation", "MedicationRequest", "MedicationAdministration", "MedicationStatement",
            "Condition", "AllergyIntolerance"} == set(types)
    canonicals = {r["url"] for r in exported.values()}
    for read in reads:
        for code_filter in read.get("codeFilter", []):
            assert code_filter["valueSet"] in canonicals  # every filter names an exported ValueSet
    temperature = next(r for r in reads if r.get("codeFilter", [{}])[0].get("valueSet", "").endswith(
        "/observation-body-temperature"))
    assert temperature["dateFilter"][0]["valueDuration"] == {"value": 240, "unit": "h",
                                                             "system": "http://unitsofmeasure.org", "code": "h"}
    ck = next(r for r in reads if r.get("codeFilter", [{}])[0].get("valueSet", "").endswith(
        "/observation-creatine-kinase"))
    assert ck["dateFilter"][0]["valueDuration"]["value"] == 5 * 24
    grouped = exported["exposure-drugs"]["compose"]["include"][0]["valueSet"]
    assert all(u.split("/ValueSet/")[1].startswith(("drug-", "atc-")) for u in grouped)


def test_export_refuses_a_bad_site_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "site.toml"
    path.write_text("[thresholds.ck]\nuln_multiple = 1\n", encoding="utf-8")
    assert cli.main(["export-knowledge", str(tmp_path / "out"), "--site-file", str(path)]) == 2
    assert "outside the documented safe bounds" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
