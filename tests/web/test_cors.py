"""CORS: production echoes only allowlisted origins, development is a wildcard, preflights need no token."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydantic import ValidationError

from tests.conftest import make_settings
from tests.helpers import security
from tests.helpers.security import (
    DISCOVERY,
    FEEDBACK,
    SERVICE,
    auth_failures,
    send,
    token,
)

# the shared fixtures: a JWT-mode app factory, its app and client, recorded outbound calls, debug logs
_debug_logs, app, build, client, outbound = (security._debug_logs, security.app, security.build, security.client,
                                             security.outbound)


# --- CORS ------------------------------------------------------------------------------------------------


def test_cors_production_echoes_only_allowlisted_origins(client: FlaskClient) -> None:
    ok = send(client, "GET", DISCOVERY, jwt_token=token(path=DISCOVERY), headers={"Origin": "https://ehr.example.org"})
    assert ok.status_code == 200
    assert ok.headers["Access-Control-Allow-Origin"] == "https://ehr.example.org"
    assert "Origin" in ok.headers.get("Vary", "")
    other = send(client, "GET", DISCOVERY, jwt_token=token(path=DISCOVERY), headers={"Origin": "https://evil.example"})
    assert other.status_code == 200  # CORS is enforced by the browser; the server just does not allow it
    assert "Access-Control-Allow-Origin" not in other.headers
    refused = send(client, "GET", DISCOVERY, headers={"Origin": "https://ehr.example.org"})
    assert refused.status_code == 401
    assert refused.headers["Access-Control-Allow-Origin"] == "https://ehr.example.org"  # the browser can read the 401


def test_cors_development_is_wildcard(build: Callable[..., Flask]) -> None:
    client = build(environment="development", cors_origins=[]).test_client()
    resp = send(client, "GET", DISCOVERY, jwt_token=token(path=DISCOVERY), headers={"Origin": "http://localhost:3000"})
    assert resp.headers["Access-Control-Allow-Origin"] == "*"


def test_cors_wildcard_is_refused_in_production() -> None:
    with pytest.raises(ValidationError, match="development only"):
        make_settings(environment="production", cors_origins=["*"])
    assert make_settings(environment="production", cors_origins="https://a.example/, https://b.example"
                         ).cors_origins == ["https://a.example", "https://b.example"]


@pytest.mark.parametrize(("path", "method", "requested"), [
    (DISCOVERY, "GET", "authorization"),
    (SERVICE, "POST", "authorization,content-type"),
    (FEEDBACK, "POST", "authorization,content-type"),
])
def test_preflight_needs_no_token(client: FlaskClient, caplog: pytest.LogCaptureFixture, path: str, method: str,
                                  requested: str) -> None:
    resp = client.options(path, headers={"Origin": "https://ehr.example.org", "Access-Control-Request-Method": method,
                                         "Access-Control-Request-Headers": requested})
    assert resp.status_code in (200, 204)
    assert resp.headers["Access-Control-Allow-Origin"] == "https://ehr.example.org"
    allowed = [h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")]
    assert "authorization" in allowed and "content-type" in allowed
    assert method in resp.headers["Access-Control-Allow-Methods"]
    assert not auth_failures(caplog)
