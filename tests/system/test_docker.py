"""The Docker image, built and run for real where a Docker engine answers (issue 15).

Skipped only when no engine can build (no client, no daemon: ``docker info`` fails, or no BuildKit: ``docker
buildx version`` fails, as on the development machines of this project); docs/operations.md (Docker) has the
same checks as a manual procedure. The base image can be replaced with ``NMS_CDS_TEST_BASE_IMAGE`` (e.g. a
locally made python:3.11-slim).

Checks: the build context stays small (.dockerignore), the container becomes healthy on a port given on the
command line (HEALTHCHECK follows it), it runs with ``--read-only --tmpfs /tmp``, and ``demo`` and
``check-config`` work inside it with the packaged fixtures.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import REPO

BUILD_TIMEOUT_SECONDS = 1200
HEALTHY_TIMEOUT_SECONDS = 120
CONTEXT_LIMIT_MB = 8.0


def engine_problem() -> str | None:
    """Why the image cannot be built here (no client, no daemon, no BuildKit), or None."""
    if shutil.which("docker") is None:
        return "no Docker client"
    for args, problem in ((["info"], "no Docker engine (`docker info` fails)"),
                          (["buildx", "version"], "no BuildKit (`docker buildx version` fails)")):
        try:
            if subprocess.run(["docker", *args], capture_output=True, timeout=60).returncode != 0:
                return problem
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{problem}: {type(exc).__name__}"
    return None


PROBLEM = engine_problem()
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=f"{PROBLEM}; see docs/operations.md (Docker)")


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check)


@pytest.fixture(scope="module")
def image() -> Iterator[tuple[str, str]]:
    tag = f"nms-cds-test:{uuid.uuid4().hex[:8]}"
    base = os.environ.get("NMS_CDS_TEST_BASE_IMAGE")
    args = ["build", "--progress=plain", "-t", tag, *(["--build-arg", f"BASE_IMAGE={base}"] if base else []), "."]
    result = subprocess.run(["docker", *args], cwd=REPO, capture_output=True, text=True,
                            timeout=BUILD_TIMEOUT_SECONDS)
    assert result.returncode == 0, result.stderr[-4000:]
    yield tag, result.stderr + result.stdout
    docker("image", "rm", "-f", tag, check=False)


def test_build_context_is_small(image: tuple[str, str]) -> None:
    sizes = [float(m.group(1)) * {"B": 1e-6, "kB": 1e-3, "KB": 1e-3, "MB": 1, "GB": 1e3}[m.group(2)]
             for m in re.finditer(r"transferring context: ([\d.]+)\s*([kKMG]?B)", image[1])]
    assert sizes and max(sizes) < CONTEXT_LIMIT_MB, sizes


def test_read_only_container_is_healthy_on_a_command_line_port(image: tuple[str, str]) -> None:
    name = f"nms-cds-test-{uuid.uuid4().hex[:8]}"
    docker("run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp",
           "--health-interval", "1s", "--health-start-period", "1s",
           "-e", "NMS_CDS_ENVIRONMENT=development", "-e", "NMS_CDS_AUTH=off", "-e", "NMS_CDS_AUTH_OFF_FORCE=true",
           image[0], "--port", "9090", "--workers", "1")
    try:
        deadline = time.monotonic() + HEALTHY_TIMEOUT_SECONDS
        status = ""
        while time.monotonic() < deadline:
            state = json.loads(docker("inspect", "--format", "{{json .State}}", name).stdout)
            status = state.get("Health", {}).get("Status", "")
            if status == "healthy" or not state.get("Running"):
                break
            time.sleep(1)
        logs = docker("logs", name, check=False)
        assert status == "healthy", logs.stdout + logs.stderr
        assert "Permission denied" not in logs.stderr and "Traceback" not in logs.stderr
    finally:
        docker("rm", "-f", name, check=False)


def test_demo_and_check_config_run_in_the_image(image: tuple[str, str]) -> None:
    demo = docker("run", "--rm", "--read-only", "--tmpfs", "/tmp", "--entrypoint", "nms-cds", image[0], "demo",
                  timeout=300, check=False)
    assert demo.returncode == 0, demo.stderr
    assert "ok  classic-nms" in demo.stdout
    bad = docker("run", "--rm", "--entrypoint", "nms-cds", "-e", "NMS_CDS_AUTH=bogus", image[0], "check-config",
                 check=False)
    assert bad.returncode == 2 and "NMS_CDS_AUTH='bogus'" in bad.stdout
