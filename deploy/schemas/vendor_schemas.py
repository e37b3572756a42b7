"""Refresh the schemas in this directory from the two PyPI wheels that ship them (both Apache-2.0):

    pip download --no-deps check-jsonschema==0.39.0 kubernetes-validate==1.37.0 -d /tmp/wheels
    python deploy/schemas/vendor_schemas.py /tmp/wheels

compose-spec.json is copied as check-jsonschema vendors it (from github.com/compose-spec/compose-spec). The
Kubernetes schemas (kubernetes-validate's JSON Schema form of the Kubernetes OpenAPI, strict variant) are cut
down to the kinds deploy/k8s/ uses and the definitions those reach, so the repository carries ~kB, not 1.3 MB.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
K8S_VERSION = "v1.34.0-local-strict"
K8S_KINDS = {"Deployment": "deployment-apps-v1", "Service": "service-v1", "Secret": "secret-v1",
             "PodDisruptionBudget": "poddisruptionbudget-policy-v1"}


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(value) for value in node))
    return set()


def main(wheels: Path) -> None:
    with zipfile.ZipFile(next(wheels.glob("check_jsonschema-*.whl"))) as wheel:
        vendor = "check_jsonschema/builtin_schemas/vendor/"
        (HERE / "compose-spec.json").write_bytes(wheel.read(vendor + "compose-spec.json"))
        (HERE / "LICENSE.compose-spec").write_bytes(wheel.read(vendor + "licenses/LICENSE.compose-spec"))
    with zipfile.ZipFile(next(wheels.glob("kubernetes_validate-*.whl"))) as wheel:
        base = f"kubernetes_validate/kubernetes-json-schema/{K8S_VERSION}/"
        definitions = json.loads(wheel.read(base + "_definitions.json"))["$defs"]
        license_name = next(n for n in wheel.namelist() if n.endswith(".dist-info/licenses/LICENSE"))
        (HERE / "LICENSE.kubernetes-validate").write_bytes(wheel.read(license_name))
        kinds = {kind: json.loads(wheel.read(base + f"{name}.json").replace(b"/api/_definitions.json#", b"#"))
                 for kind, name in K8S_KINDS.items()}
    for schema in kinds.values():  # their own $id would rebase the "#/$defs/..." references
        schema.pop("$id", None)
        schema.pop("$schema", None)
    wanted: set[str] = set()
    todo = set().union(*(_refs(schema) for schema in kinds.values()))
    while todo:
        ref = todo.pop()
        name = ref.rsplit("/", 1)[1]
        if name not in wanted:
            wanted.add(name)
            todo |= _refs(definitions[name])
    # one JSON Schema 2020-12 document: each kind is $defs/kind.<Kind>; validate against {"$ref": that}
    pruned = {"$schema": "https://json-schema.org/draft/2020-12/schema",
              "$comment": f"kubernetes-validate 1.37.0, {K8S_VERSION}, pruned by vendor_schemas.py",
              "$defs": {**{f"kind.{kind}": schema for kind, schema in kinds.items()},
                        **{name: definitions[name] for name in sorted(wanted)}}}
    (HERE / f"kubernetes-{K8S_VERSION}.json").write_text(json.dumps(pruned, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
