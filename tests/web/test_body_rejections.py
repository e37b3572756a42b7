"""Request bodies refused with a clear status before anything else runs (size, depth, malformed JSON)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import responses
from flask import Flask
from flask.testing import FlaskClient

from tests.helpers import security
from tests.helpers.outcome import issue
from tests.helpers.security import (
    ACCESS_TOKEN,
    SERVICE,
    hook_body,
    logged_text,
    send,
    token,
)

# the shared fixtures: a JWT-mode app factory, its app and client, recorded outbound calls, debug logs
_debug_logs, app, build, client, outbound = (security._debug_logs, security.app, security.build, security.client,
                                             security.outbound)


def test_oversized_body_is_413(client: FlaskClient, build: Callable[..., Flask], caplog: pytest.LogCaptureFixture,
                               outbound: responses.RequestsMock) -> None:
    small = build(max_body_bytes=4096).test_client()
    body = hook_body(padding="x" * 8192)
    resp = send(small, "POST", SERVICE, jwt_token=token(), body=body)
    assert resp.status_code == 413
    assert resp.is_json and issue(resp.get_json())["code"] == "too-costly"
    assert len(outbound.calls) == 0
    assert ACCESS_TOKEN not in logged_text(caplog)


def test_deep_json_is_400_naming_the_problem(client: FlaskClient, caplog: pytest.LogCaptureFixture,
                                             outbound: responses.RequestsMock) -> None:
    deep = "[" * 200 + "]" * 200
    raw = json.dumps(hook_body())[:-1] + f', "x": {deep}}}'
    resp = send(client, "POST", SERVICE, jwt_token=token(), data=raw, content_type="application/json")
    assert resp.status_code == 400
    assert resp.is_json and "nesting deeper than 64" in issue(resp.get_json())["diagnostics"]
    assert len(outbound.calls) == 0
    assert ACCESS_TOKEN not in logged_text(caplog)


@pytest.mark.parametrize(("data", "fragment"), [
    (b"{not json", "not valid JSON"),
    (b"", "empty"),
    (b'{"hook": "\xff"}', "UTF-8"),
    (b"[]", "JSON object"),
], ids=["syntax", "empty", "not-utf8", "array"])
def test_malformed_bodies_are_clear_400s(client: FlaskClient, outbound: responses.RequestsMock, data: bytes,
                                         fragment: str) -> None:
    resp = send(client, "POST", SERVICE, jwt_token=token(), data=data, content_type="application/json")
    assert resp.status_code == 400
    assert resp.is_json and fragment in issue(resp.get_json())["diagnostics"]
    assert len(outbound.calls) == 0
