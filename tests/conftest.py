"""Common pytest fixtures (Flask tutorial style): settings, app, client, and the in-repository datasets."""

from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cds_service.app import create_app
from cds_service.config import Settings

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO / "datasets"  # third-party test data, each file listed in datasets/MANIFEST.tsv
FHIR_BASE = "https://fhir.example.org/r4"
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
# Apps built from the environment (Settings()) in tests keep their SQLite store in a throw-away directory.
os.environ.setdefault("NMS_CDS_DATA_DIR", tempfile.mkdtemp(prefix="nms-cds-tests-"))


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound once and released; servers started by tests listen on it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def dataset_json(relative: str) -> Any:
    """A JSON file from ``datasets/``; a missing file fails the test (it never skips)."""
    path = DATASETS / relative
    if not path.is_file():
        pytest.fail(f"test data missing: datasets/{relative} (see datasets/MANIFEST.tsv)")
    return json.loads(path.read_text(encoding="utf-8"))


def make_settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "auth": "off",
        "environment": "development",
        "fhir_allowlist": [FHIR_BASE, "http://127.0.0.1:8081"],
        "fixed_now": NOW,
        "public_base_url": "http://127.0.0.1:8080",
        "data_dir": Path(tempfile.mkdtemp(prefix="nms-cds-store-")),  # a fresh store per app
    }
    base.update(overrides)
    return Settings(**base)


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    application = create_app(settings)
    yield application
    application.extensions["nms_cds"].pool.shutdown()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def require_local_fhir() -> None:
    """Skip a module when Node or the local FHIR server's packages are missing - except in CI, where the
    integration suite is required and a missing Node toolchain must fail loudly instead of skipping."""
    import os

    from cds_service.devtools import localfhir

    if localfhir.node_available():
        return
    problem = "node/npm or fhir_server/node_modules unavailable"
    try:
        localfhir.ensure_node_packages()
    except Exception as exc:
        problem += f" ({type(exc).__name__}: {exc})"
    if localfhir.node_available():
        return
    if os.environ.get("CI"):
        pytest.fail(f"integration tests need the local FHIR server in CI: {problem}", pytrace=False)
    pytest.skip(problem, allow_module_level=True)
