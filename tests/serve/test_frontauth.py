"""The front's header-only JWT pass (serve/frontauth.py): what it lets through to the body, what it refuses,
and that it never uses up a token's jti (the real request does, once)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from werkzeug.test import Client

from cds_service.serve import frontauth
from tests.conftest import app_for, make_settings
from tests.helpers.jwt_helpers import ec_key, jwks, make_token, write_trusted_clients
from tests.protocol.test_protocol import hook_request

ISS = "https://ehr.example.org"
BASE = "http://127.0.0.1:8080"
PATH = "/cds-services/nms-order-sign"


@pytest.fixture
def jwt_app(tmp_path: Path) -> Iterator[Flask]:
    clients = write_trusted_clients(tmp_path / "clients.json", [{"iss": ISS, "jwks": jwks(ec_key())}])
    with app_for(make_settings(auth="jwt", trusted_clients=clients, environment="production")) as app:
        yield app


def auth_pass(app: Flask, token: str | None, uri: str = PATH, method: str = "POST", length: str = "1234") -> int:
    headers = {"X-Original-URI": uri, "X-Original-Method": method, "X-Original-Content-Length": length}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    client = Client(frontauth.wrap(app))
    response = client.get(frontauth.AUTH_PATH, headers=headers)
    assert response.data == b""
    return response.status_code


def test_a_valid_token_passes_and_its_jti_is_left_to_the_real_request(jwt_app: Flask) -> None:
    token = make_token(ec_key(), iss=ISS, aud=BASE + PATH, now=time.time())
    assert auth_pass(jwt_app, token) == 204
    assert auth_pass(jwt_app, token) == 204  # not claimed: the same token passes the header check again
    client = jwt_app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    assert client.post(PATH, json=hook_request(), headers=headers).status_code == 200
    assert client.post(PATH, json=hook_request(), headers=headers).status_code == 401  # then claimed, once


def test_refusals_before_the_body(jwt_app: Flask, caplog: pytest.LogCaptureFixture) -> None:
    now = time.time()
    assert auth_pass(jwt_app, None) == 401
    assert auth_pass(jwt_app, make_token(ec_key("other", "P-384"), iss=ISS, aud=BASE + PATH, now=now)) == 401
    assert auth_pass(jwt_app, make_token(ec_key(), iss=ISS, aud=BASE + "/cds-services", now=now)) == 401  # aud
    assert auth_pass(jwt_app, make_token(ec_key(), iss=ISS, aud=BASE + PATH, now=now - 3600)) == 401  # expired
    assert auth_pass(jwt_app, make_token(ec_key(), iss=ISS, aud=BASE + PATH, now=now), uri="x") == 401
    assert auth_pass(jwt_app, make_token(ec_key(), iss=ISS, aud=BASE + PATH, now=now), uri="/" * 3000) == 401
    assert "unauthorized (before the body)" in caplog.text


def test_the_audience_is_the_decoded_path_without_the_query(jwt_app: Flask) -> None:
    token = make_token(ec_key(), iss=ISS, aud=BASE + PATH, now=time.time())
    assert auth_pass(jwt_app, token, uri="/cds-services/nms%2Dorder-sign?x=1") == 204


def test_a_cors_preflight_without_a_body_passes(jwt_app: Flask) -> None:
    assert auth_pass(jwt_app, None, method="OPTIONS", length="") == 204
    assert auth_pass(jwt_app, None, method="OPTIONS", length="10") == 401  # a body needs a token


def test_auth_off_and_foreign_apps_pass(tmp_path: Path) -> None:
    with app_for(make_settings()) as app:
        assert auth_pass(app, None) == 204
    bare = Flask("bare")
    assert auth_pass(bare, None) == 204  # --app: an app of its own answers for itself


def test_other_paths_go_to_the_app(jwt_app: Flask) -> None:
    response = Client(frontauth.wrap(jwt_app)).get("/healthz")
    assert response.status_code == 200 and response.json == {"status": "ok"}


def test_a_failure_in_the_pass_is_a_500(jwt_app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("jwks")

    monkeypatch.setattr(jwt_app.extensions["nms_cds"].authenticator, "verify", boom)
    assert auth_pass(jwt_app, "a.b.c") == 500
