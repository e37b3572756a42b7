"""Tokens the service accepts: algorithms, the key's alg, the specification's example key, aud, claims, tenant."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import responses
from flask import Flask
from flask.testing import FlaskClient

from tests.helpers import security
from tests.helpers.jwt_helpers import (
    SigningKey,
    ec_key,
    jwks,
    make_token,
    rsa_key,
    spec_key,
)
from tests.helpers.security import (
    BASE,
    DISCOVERY,
    FEEDBACK,
    ISS,
    NOW,
    SERVICE,
    SPEC_ISS,
    SPEC_JKU,
    any_rsa,
    assert_rejected,
    logged_text,
    prefetched_body,
    send,
    token,
    trusted_ec,
)

# the shared fixtures: a JWT-mode app factory, its app and client, recorded outbound calls, debug logs
_debug_logs, app, build, client, outbound = (security._debug_logs, security.app, security.build, security.client,
                                             security.outbound)


# --- accepted tokens -----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [
    trusted_ec, lambda: rsa_key("ehr-rs384", "RS384"), lambda: ec_key("ehr-es256", "P-256"),
    any_rsa, lambda: SigningKey(any_rsa().kid, "RS384", any_rsa().private),
], ids=["ES384", "RS384", "ES256", "RS256-key-without-alg", "RS384-key-without-alg"])
def test_asymmetric_algorithms_are_accepted(client: FlaskClient, key: Callable[[], SigningKey]) -> None:
    resp = send(client, "POST", SERVICE, jwt_token=token(key()), body=prefetched_body())
    assert resp.status_code == 200, resp.get_json()


def test_alg_must_match_the_jwk_alg(client: FlaskClient, caplog: pytest.LogCaptureFixture,
                                    outbound: responses.RequestsMock) -> None:
    # the JWK says RS384: an RS256 signature by the very same key is refused
    jwt_token = token(SigningKey("ehr-rs384", "RS256", rsa_key("ehr-rs384", "RS384").private))
    assert_rejected(send(client, "POST", SERVICE, jwt_token=jwt_token), caplog, outbound, "does not suit", jwt_token)


def test_alg_must_suit_the_key(client: FlaskClient, caplog: pytest.LogCaptureFixture,
                               outbound: responses.RequestsMock) -> None:
    # kid of the P-384 key, signed ES256 with some P-256 key: refused before any signature check
    jwt_token = token(ec_key("other-256", "P-256"), headers={"kid": trusted_ec().kid})
    assert_rejected(send(client, "POST", SERVICE, jwt_token=jwt_token), caplog, outbound, "does not suit", jwt_token)


def test_spec_example_key_verifies(client: FlaskClient) -> None:
    jwt_token = token(spec_key(), iss=SPEC_ISS, headers={"jku": SPEC_JKU})
    resp = send(client, "POST", SERVICE, jwt_token=jwt_token, body=prefetched_body())
    assert resp.status_code == 200


def test_valid_token_on_every_route_with_its_own_aud(client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    discovery = token(path=DISCOVERY)
    service = token(path=SERVICE)
    feedback = token(path=FEEDBACK)
    assert send(client, "GET", DISCOVERY, jwt_token=discovery).status_code == 200
    assert send(client, "POST", SERVICE, jwt_token=service, body=prefetched_body()).status_code == 200
    assert send(client, "POST", FEEDBACK, jwt_token=feedback).status_code == 200
    text = logged_text(caplog)
    for secret in (discovery, service, feedback):
        assert secret not in text


def test_aud_as_a_list_containing_the_endpoint(client: FlaskClient) -> None:
    jwt_token = make_token(trusted_ec(), iss=ISS, aud=["https://other.example", BASE + SERVICE], now=NOW)
    assert send(client, "POST", SERVICE, jwt_token=jwt_token, body=prefetched_body()).status_code == 200


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"lifetime": 7200}, "lifetime"),
    ({"drop": ("jti",)}, "jti"),
    ({"drop": ("exp",)}, "exp"),
    ({"drop": ("iat",)}, "iat"),
    ({"drop": ("aud",)}, "aud"),
    ({"exp": "tomorrow"}, "exp"),
    ({"headers": {"typ": "at+jwt"}}, "typ"),
], ids=["lifetime-2h", "no-jti", "no-exp", "no-iat", "no-aud", "exp-string", "wrong-typ"])
def test_claim_rules(client: FlaskClient, caplog: pytest.LogCaptureFixture, outbound: responses.RequestsMock,
                     kwargs: dict[str, Any], reason: str) -> None:
    jwt_token = token(**kwargs)
    assert_rejected(send(client, "POST", SERVICE, jwt_token=jwt_token), caplog, outbound, reason, jwt_token)


def test_tenant_must_match_when_configured(build: Callable[..., Flask], caplog: pytest.LogCaptureFixture,
                                           outbound: responses.RequestsMock) -> None:
    app = build([{"iss": ISS, "jwks": jwks(trusted_ec()), "tenant": "hospital-a"}])
    client = app.test_client()
    ok = send(client, "POST", SERVICE, jwt_token=token(tenant="hospital-a"), body=prefetched_body())
    assert ok.status_code == 200
    for wrong in (token(tenant="hospital-b"), token()):
        assert_rejected(send(client, "POST", SERVICE, jwt_token=wrong), caplog, outbound, "tenant", wrong)


def test_healthz_needs_no_token(client: FlaskClient) -> None:
    assert client.get("/healthz").status_code == 200
