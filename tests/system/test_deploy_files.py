"""deploy/compose.yaml and deploy/k8s/*.yaml: valid against the vendored Compose Specification and Kubernetes 1.34
schemas (deploy/schemas/SOURCES.md), and saying what a hospital's deployment needs (probes, secrets, read-only
root file system, non-root, Redis noeviction, a spool that fits the front's bound). No engine is needed; with a
Docker client and engine, ``docker compose config`` checks the file as well (skipped otherwise, as the Docker
image tests are)."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator, Draft202012Validator

from cds_service.config import Settings
from tests.conftest import REPO

DEPLOY = REPO / "deploy"
SCHEMAS = DEPLOY / "schemas"
SECRET_SETTINGS = {"NMS_CDS_DATABASE_URL", "NMS_CDS_REDIS_URL", "NMS_CDS_METRICS_TOKEN", "NMS_CDS_AUDIT_HASH_KEY"}
MIB = 1024 * 1024


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return document


def manifests() -> list[dict[str, Any]]:
    return [doc for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_validator(kind: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / "kubernetes-v1.34.0-local-strict.json").read_text())
    return Draft202012Validator({**schema, "$ref": f"#/$defs/kind.{kind}"})


def settings_names() -> set[str]:
    return {f"NMS_CDS_{name.upper()}" for name in Settings.model_fields}


def size_bytes(text: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([a-zA-Z]*)", text).groups()  # type: ignore[union-attr]
    return int(number) * {"": 1, "k": 1024, "m": MIB, "g": 1024 * MIB, "Ki": 1024, "Mi": MIB, "Gi": 1024 * MIB}[unit]


def spool_bound(env: dict[str, str]) -> int:
    """The front's worst-case disk spool (docs/security.md): uploads at once × largest body."""
    defaults = Settings(auth="off")
    uploads = int(env.get("NMS_CDS_FRONT_MAX_UPLOADS", defaults.front_max_uploads))
    return uploads * int(env.get("NMS_CDS_MAX_BODY_BYTES", defaults.max_body_bytes))


# --- compose ----------------------------------------------------------------------------------------------

def test_compose_file_is_valid_against_the_compose_specification() -> None:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    errors = sorted(Draft7Validator(schema).iter_errors(compose()), key=str)
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]]
    broken = copy.deepcopy(compose())
    broken["services"]["nms-cds"]["healthcheck"]["intervall"] = "5s"  # the schema does catch a typo
    assert list(Draft7Validator(schema).iter_errors(broken))


def test_compose_runs_the_image_hardened_with_its_backends() -> None:
    services = compose()["services"]
    assert set(services) == {"nms-cds", "postgres", "redis"}
    for name, service in services.items():
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert service["healthcheck"]["test"], name
    app = services["nms-cds"]
    assert app["user"].split(":")[0] not in ("0", "root")
    assert app["healthcheck"]["test"] == ["CMD", "nms-cds", "healthcheck"]
    assert app["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                 "redis": {"condition": "service_healthy"}}
    assert "--maxmemory-policy noeviction" in " ".join(services["redis"]["command"])
    env = app["environment"]
    assert env["NMS_CDS_AUTH"] == "jwt" and env["NMS_CDS_ENVIRONMENT"] == "production"
    assert set(env) <= settings_names(), set(env) - settings_names()  # no misspelt setting
    assert not SECRET_SETTINGS & set(env)  # secrets come from files under /run/secrets, never from this file
    entry = " ".join(app["entrypoint"])
    for name in SECRET_SETTINGS:
        assert f"{name}=" in entry
    declared = set(compose()["secrets"])
    for service in services.values():
        assert set(service.get("secrets", [])) <= declared
    # the spool has a file system of its own, large enough for the front's worst case
    spool = next(t for t in app["tmpfs"] if t.startswith("/var/spool/nms-cds:"))
    assert env["NMS_CDS_FRONT_SPOOL_DIR"].startswith("/var/spool/nms-cds/")
    assert size_bytes(re.search(r"size=(\w+)", spool).group(1)) >= spool_bound(env)  # type: ignore[union-attr]
    assert "postgres" not in (app.get("ports") or []) and not services["postgres"].get("ports")
    assert compose()["networks"]["back"]["internal"] is True


def test_docker_compose_accepts_the_file(tmp_path: Path) -> None:
    if shutil.which("docker") is None or subprocess.run(["docker", "compose", "version"], capture_output=True,
                                                        timeout=60).returncode != 0:
        pytest.skip("no Docker client with the compose plugin (the schema test above still ran)")
    work = tmp_path / "deploy"
    shutil.copytree(DEPLOY, work)
    secrets = work / "secrets"
    secrets.mkdir(exist_ok=True)
    for name in ("trusted-clients.json", "postgres-password", "redis-password", "metrics-token", "audit-hash-key"):
        (secrets / name).write_text("x")
    env = {"NMS_CDS_PUBLIC_BASE_URL": "https://cds.example.org", "NMS_CDS_FHIR_ALLOWLIST": "https://f.example.org",
           "PATH": "/usr/bin:/bin:/usr/local/bin"}
    result = subprocess.run(["docker", "compose", "-f", str(work / "compose.yaml"), "config", "--quiet"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr


# --- kubernetes -------------------------------------------------------------------------------------------

def test_kubernetes_manifests_are_valid_kubernetes_objects() -> None:
    docs = manifests()
    assert {doc["kind"] for doc in docs} == {"Deployment", "Service", "Secret", "PodDisruptionBudget"}
    for doc in docs:
        errors = sorted(k8s_validator(doc["kind"]).iter_errors(doc), key=str)
        assert not errors, (doc["kind"], [f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]])
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/readyz"
    assert list(k8s_validator("Deployment").iter_errors(broken))  # strict: unknown fields are refused


def test_the_deployment_is_probed_hardened_and_fed_its_secrets() -> None:
    docs = {doc["kind"]: doc for doc in manifests()}
    deployment = docs["Deployment"]
    spec = deployment["spec"]
    assert spec["replicas"] >= 2 and spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    container, = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    env = {item["name"]: item for item in container["env"]}
    assert set(env) <= settings_names(), set(env) - settings_names()
    for name in SECRET_SETTINGS:
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == docs["Secret"]["metadata"]["name"], name
    assert set(docs["Secret"]["stringData"]) >= {ref["valueFrom"]["secretKeyRef"]["key"]
                                                 for ref in env.values() if "valueFrom" in ref}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["/tmp"] in volumes  # writable places on a read-only root: each a volume
    trusted = env["NMS_CDS_TRUSTED_CLIENTS"]["value"]
    secret_mount = next(path for path in mounts if trusted.startswith(path + "/"))
    assert volumes[mounts[secret_mount]]["secret"]["secretName"] == "nms-cds"
    spool_dir = env["NMS_CDS_FRONT_SPOOL_DIR"]["value"]
    spool = volumes[mounts[next(path for path in mounts if spool_dir.startswith(path + "/"))]]
    values = {name: item["value"] for name, item in env.items() if "value" in item}
    assert size_bytes(spool["emptyDir"]["sizeLimit"]) >= spool_bound(values)
    service = docs["Service"]
    labels = spec["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= {p["name"] for p in container["ports"]}
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
