"""The rules' knowledge as FHIR R4 resources (``nms-cds export-knowledge DIR``): one ValueSet per value set the
rules read (after the site file), grouping ValueSets for the searches, and a Library (logic-library) whose
``dataRequirement`` entries say which resources, codes and look-back the rules read. A terminology team reviews
them with its own tools; every resource validates with the project's FHIR models (fhir.resources R4B).
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from fhir.resources.R4B.library import Library
from fhir.resources.R4B.valueset import ValueSet

from cds_service.clinical.site import Member, tables
from cds_service.clinical.valuesets import load, using
from cds_service.fhir.bounds import windows
from cds_service.knowledge import Knowledge

CANONICAL = "https://github.com/nms-cds/nms-cds/fhir"  # the project's canonical base (as its override codes)
PUBLISHER = "nms-cds"
LIBRARY_TYPE = "http://terminology.hl7.org/CodeSystem/library-type"
UCUM = "http://unitsofmeasure.org"

# The concepts of each Observation search of the rules (cds_service/services/templates.py) and its look-back.
OBSERVATION_READS = (
    ("body-temperature", "vitals"), ("heart-rate", "vitals"), ("respiratory-rate", "vitals"),
    ("bp-panel", "vitals"), ("systolic-bp", "vitals"), ("diastolic-bp", "vitals"),
    ("creatine-kinase", "labs"), ("serum-iron", "labs"), ("wbc", "labs"), ("crp", "labs"), ("albumin", "labs"),
    ("creatinine", "labs"), ("potassium", "labs"), ("blood-culture", "labs"),
)
# Grouping value sets: the medications and conditions the rules weigh, one canonical per search.
GROUPS = {
    "exposure-drugs": ("Drugs assessed as exposure (dopamine antagonists, dopaminergic drugs, lithium)",
                       ("drug:", "atc:")),
    "other-cause-drugs": ("Drugs that point to another cause of fever or CK rise", ("other-drug:",)),
    "conditions": ("Conditions the rules weigh (NMS history, other causes)", ("condition:", "cause:")),
}
# The medication record types and the element their look-back reads.
MEDICATION_READS = (("MedicationRequest", "authoredOn"), ("MedicationAdministration", "effective"),
                    ("MedicationStatement", "effective"))


def slug(name: str) -> str:
    """``observation:creatine-kinase`` -> ``observation-creatine-kinase`` (a FHIR id)."""
    return re.sub(r"[^A-Za-z0-9\-.]", "-", name)[:64]


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", name) if part)


def url(name: str) -> str:
    return f"{CANONICAL}/ValueSet/{slug(name)}"


def _provenance(knowledge: Knowledge) -> str:
    if knowledge.path is None:
        return f"Knowledge version {knowledge.version}: the packaged tables (cds_service/clinical/data) as they are."
    return (f"Knowledge version {knowledge.version}: the packaged tables (cds_service/clinical/data) with the site "
            f"file {knowledge.path.name} ({len(knowledge.overrides)} overrides) applied.")


def value_set(name: str, members: list[Member], knowledge: Knowledge) -> dict[str, Any]:
    """One value set of the rules as a ValueSet: codes by system; an ICD-10 category the rules match by prefix as
    an ``is-a`` filter."""
    by_system: dict[str, list[dict[str, str]]] = {}
    filters: list[dict[str, Any]] = []
    for m in members:
        if m.prefix:
            filters.append({"system": m.system, "filter": [{"property": "concept", "op": "is-a", "value": m.code}]})
        else:
            entry = {"code": m.code, **({"display": m.display} if m.display else {})}
            if entry not in by_system.setdefault(m.system, []):
                by_system[m.system].append(entry)
    include = [{"system": system, "concept": concepts} for system, concepts in by_system.items()] + filters
    table, _, concept = name.partition(":")
    return {
        "resourceType": "ValueSet", "id": slug(name), "url": url(name), "version": knowledge.version,
        "name": _camel(name), "title": f"NMS rules: {table} {concept}", "status": "active",
        "experimental": False, "publisher": PUBLISHER,
        "description": f"The codes the NMS rules read as {table} '{concept}'. " + _provenance(knowledge)
        + " Site code maps that apply only to a given text are listed with their code; the text condition is in "
        "the site file.",
        "compose": {"include": include},
    }


def group(name: str, title: str, parts: list[str], knowledge: Knowledge) -> dict[str, Any]:
    return {
        "resourceType": "ValueSet", "id": slug(name), "url": url(name), "version": knowledge.version,
        "name": _camel(name), "title": f"NMS rules: {title}", "status": "active", "experimental": False,
        "publisher": PUBLISHER, "description": f"{title}: the union of the rules' value sets. "
        + _provenance(knowledge),
        "compose": {"include": [{"valueSet": [url(p) for p in parts]}]},
    }


def _duration(delta: timedelta) -> dict[str, Any]:
    hours = round(delta.total_seconds() / 3600)
    return {"value": hours, "unit": "h", "system": UCUM, "code": "h"}


def library(knowledge: Knowledge, names: list[str]) -> dict[str, Any]:
    """The Library of the rules: what they read (``dataRequirement``) and every value set (``relatedArtifact``)."""
    with using(knowledge.site):
        lookback = windows()
    reads: list[dict[str, Any]] = [{"type": "Patient", "mustSupport": ["gender"]}]
    for concept, window in OBSERVATION_READS:
        name = f"observation:{concept}"
        if name in names:
            reads.append({"type": "Observation", "codeFilter": [{"path": "code", "valueSet": url(name)}],
                          "dateFilter": [{"path": "effective", "valueDuration": _duration(lookback[window])}]})
    for resource, element in MEDICATION_READS:
        for key in ("exposure-drugs", "other-cause-drugs"):
            reads.append({"type": resource, "codeFilter": [{"path": "medication", "valueSet": url(key)}],
                          "dateFilter": [{"path": element, "valueDuration": _duration(lookback["exposure"])}]})
    reads.append({"type": "Condition", "codeFilter": [{"path": "code", "valueSet": url("conditions")}]})
    reads.append({"type": "AllergyIntolerance", "codeFilter": [{"path": "code", "valueSet": url("condition:nms")}]})
    return {
        "resourceType": "Library", "id": "nms-cds-rules", "url": f"{CANONICAL}/Library/nms-cds-rules",
        "version": knowledge.version, "name": "NmsCdsRules", "title": "NMS pattern check: the rules' data",
        "status": "active", "experimental": False,
        "type": {"coding": [{"system": LIBRARY_TYPE, "code": "logic-library", "display": "Logic Library"}]},
        "publisher": PUBLISHER,
        "description": "What the neuroleptic malignant syndrome rules of nms-cds read from a FHIR R4 record: "
        "Observations by value set with their look-back, medication records of the drugs assessed, conditions "
        "and allergies. The thresholds are in docs/clinical-rules.md. " + _provenance(knowledge),
        "relatedArtifact": [{"type": "depends-on", "resource": url(n)} for n in names],
        "dataRequirement": reads,
    }


def resources(knowledge: Knowledge) -> list[dict[str, Any]]:
    """Every ValueSet, then the Library, of ``knowledge``; each validated with the R4B models."""
    named = tables(load(knowledge.site))
    names = sorted(named)
    out = [value_set(n, named[n], knowledge) for n in names]
    groups = []
    for key, (title, prefixes) in GROUPS.items():
        groups.append(group(key, title, [n for n in names if n.startswith(prefixes)], knowledge))
    out += groups
    out.append(library(knowledge, [*names, *GROUPS]))
    for resource in out:
        (ValueSet if resource["resourceType"] == "ValueSet" else Library).model_validate(resource)
    return out


def write(knowledge: Knowledge, folder: Path) -> list[Path]:
    """Write ``<type>-<id>.json`` for each resource into ``folder`` (created); return the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for resource in resources(knowledge):
        path = folder / f"{resource['resourceType']}-{resource['id']}.json"
        path.write_text(json.dumps(resource, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        paths.append(path)
    return paths
