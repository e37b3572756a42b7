"""Tokens the service refuses: each case a 401 with a bare body, no outbound call, no secret in any log record,
and the reason the server logged checked."""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import responses
from flask import Flask
from flask.testing import FlaskClient

from tests.helpers import security
from tests.helpers.jwt_helpers import (
    SigningKey,
    claims_for,
    ec_key,
    hs256_with_public_key,
    jwks,
    make_token,
    rsa_key,
    tamper,
    unsigned_token,
)
from tests.helpers.security import (
    BASE,
    DISCOVERY,
    FEEDBACK,
    ISS,
    JWKS_URL,
    NOW,
    ROTATING_ISS,
    SERVICE,
    assert_rejected,
    default_clients,
    prefetched_body,
    send,
    token,
    trusted_ec,
)

# the shared fixtures: a JWT-mode app factory, its app and client, recorded outbound calls, debug logs
_debug_logs, app, build, client, outbound = (security._debug_logs, security.app, security.build, security.client,
                                             security.outbound)


# --- the rejection cases the issue lists, each its own test -------------------------------------------


@pytest.mark.parametrize(("method", "path"), [("GET", DISCOVERY), ("POST", SERVICE), ("POST", FEEDBACK)])
def test_no_token_is_401_on_every_route(client: FlaskClient, caplog: pytest.LogCaptureFixture,
                                        outbound: responses.RequestsMock, method: str, path: str) -> None:
    resp = send(client, method, path)
    assert_rejected(resp, caplog, outbound, "missing Authorization header")


@pytest.mark.parametrize(("authorization", "reason"), [
    ("Bearer not-a-jwt", "malformed token"),
    ("Bearer a.b.c", "malformed token"),
    ("Bearer " + "A" * 9000, "too long"),
    ("Bearer ", "empty bearer token"),
    ("Basic dXNlcjpwYXNz", "not Bearer"),
    ("Bearer eyJhbGciOiJFUzM4NCJ9.bm90IGpzb24.c2ln", "malformed token"),
], ids=["garbage", "three-junk-segments", "huge", "empty", "basic-auth", "payload-not-json"])
def test_malformed_token(client: FlaskClient, caplog: pytest.LogCaptureFixture, outbound: responses.RequestsMock,
                         authorization: str, reason: str) -> None:
    resp = send(client, "POST", SERVICE, authorization=authorization)
    assert_rejected(resp, caplog, outbound, reason, authorization.removeprefix("Bearer ").strip())


def test_alg_none(client: FlaskClient, caplog: pytest.LogCaptureFixture, outbound: responses.RequestsMock) -> None:
    forged = unsigned_token(claims_for(iss=ISS, aud=BASE + SERVICE, now=NOW), kid=trusted_ec().kid)
    resp = send(client, "POST", SERVICE, jwt_token=forged)
    assert_rejected(resp, caplog, outbound, "algorithm not allowed: none", forged)


@pytest.mark.parametrize("key", [trusted_ec, lambda: rsa_key("ehr-rs384", "RS384")], ids=["ec", "rsa"])
def test_hs256_signed_with_the_public_key_as_secret(client: FlaskClient, caplog: pytest.LogCaptureFixture,
                                                    outbound: responses.RequestsMock,
                                                    key: Callable[[], SigningKey]) -> None:
    forged = hs256_with_public_key(claims_for(iss=ISS, aud=BASE + SERVICE, now=NOW), key())
    resp = send(client, "POST", SERVICE, jwt_token=forged)
    assert_rejected(resp, caplog, outbound, "algorithm not allowed: HS256", forged)


def test_expired(client: FlaskClient, caplog: pytest.LogCaptureFixture, outbound: responses.RequestsMock) -> None:
    jwt_token = token(now=NOW - 400, lifetime=300)  # exp 100 s ago, beyond the 30 s leeway
    resp = send(client, "POST", SERVICE, jwt_token=jwt_token)
    assert_rejected(resp, caplog, outbound, "token expired", jwt_token)


def test_expired_within_leeway_is_accepted(client: FlaskClient) -> None:
    resp = send(client, "POST", SERVICE, jwt_token=token(now=NOW - 320, lifetime=300), body=prefetched_body())
    assert resp.status_code == 200


def test_not_yet_valid_iat_in_the_future(client: FlaskClient, caplog: pytest.LogCaptureFixture,
                                         outbound: responses.RequestsMock) -> None:
    jwt_token = token(now=NOW + 120)
    resp = send(client, "POST", SERVICE, jwt_token=jwt_token)
    assert_rejected(resp, caplog, outbound, "issued in the future", jwt_token)


def test_not_yet_valid_nbf(client: FlaskClient, caplog: pytest.LogCaptureFixture,
                           outbound: responses.RequestsMock) -> None:
    jwt_token = token(nbf=int(NOW) + 120)
    resp = send(client, "POST", SERVICE, jwt_token=jwt_token)
    assert_rejected(resp, caplog, outbound, "not yet valid", jwt_token)


def test_small_clock_skew_is_tolerated(client: FlaskClient) -> None:
    resp = send(client, "POST", SERVICE, jwt_token=token(now=NOW + 20, nbf=int(NOW) + 20), body=prefetched_body())
    assert resp.status_code == 200


@pytest.mark.parametrize("aud", [
    BASE + "/cds-services/other-service",
    BASE + SERVICE + "/",
    BASE + DISCOVERY,
    "http://cds.example.org" + SERVICE,
    [BASE + DISCOVERY, BASE + FEEDBACK],
    [],
], ids=["other-service", "trailing-slash", "discovery-aud", "http-scheme", "list-without-it", "empty-list"])
def test_wrong_aud(client: FlaskClient, caplog: pytest.LogCaptureFixture, outbound: responses.RequestsMock,
                   aud: Any) -> None:
    jwt_token = make_token(trusted_ec(), iss=ISS, aud=aud, now=NOW)
    resp = send(client, "POST", SERVICE, jwt_token=jwt_token)
    assert_rejected(resp, caplog, outbound, "aud", jwt_token)


def test_unknown_iss(client: FlaskClient, caplog: pytest.LogCaptureFixture, outbound: responses.RequestsMock) -> None:
    jwt_token = token(iss="https://attacker.example.net")
    resp = send(client, "POST", SERVICE, jwt_token=jwt_token)
    assert_rejected(resp, caplog, outbound, "issuer not trusted", jwt_token)
    assert any(getattr(r, "iss", None) == "https://attacker.example.net" for r in caplog.records)  # iss is loggable


def test_unknown_kid(client: FlaskClient, caplog: pytest.LogCaptureFixture, outbound: responses.RequestsMock) -> None:
    jwt_token = token(headers={"kid": "no-such-key"})
    resp = send(client, "POST", SERVICE, jwt_token=jwt_token)
    assert_rejected(resp, caplog, outbound, "unknown kid", jwt_token)


def test_bad_signature_other_key_same_kid(client: FlaskClient, caplog: pytest.LogCaptureFixture,
                                          outbound: responses.RequestsMock) -> None:
    impostor = SigningKey(trusted_ec().kid, "ES384", ec_key("impostor").private)
    jwt_token = token(impostor)
    resp = send(client, "POST", SERVICE, jwt_token=jwt_token)
    assert_rejected(resp, caplog, outbound, "bad signature", jwt_token)


def test_bad_signature_tampered_payload(client: FlaskClient, caplog: pytest.LogCaptureFixture,
                                        outbound: responses.RequestsMock) -> None:
    jwt_token = tamper(token())
    resp = send(client, "POST", SERVICE, jwt_token=jwt_token)
    assert_rejected(resp, caplog, outbound, "bad signature", jwt_token)


def test_replayed_jti(client: FlaskClient, caplog: pytest.LogCaptureFixture, outbound: responses.RequestsMock) -> None:
    jwt_token = token()
    first = send(client, "POST", SERVICE, jwt_token=jwt_token, body=prefetched_body())
    assert first.status_code == 200
    replay = send(client, "POST", SERVICE, jwt_token=jwt_token)
    assert_rejected(replay, caplog, outbound, "jti replayed", jwt_token)


def test_replayed_jti_in_a_fresh_token_and_on_another_route(client: FlaskClient, caplog: pytest.LogCaptureFixture,
                                                            outbound: responses.RequestsMock) -> None:
    jti = str(uuid.uuid4())
    assert send(client, "GET", DISCOVERY, jwt_token=token(path=DISCOVERY, jti=jti)).status_code == 200
    again = token(now=NOW + 5, jti=jti)  # another signature, same (iss, jti)
    assert_rejected(send(client, "POST", SERVICE, jwt_token=again), caplog, outbound, "jti replayed", again)


def test_jku_not_the_allowlisted_jwks_url(client: FlaskClient, caplog: pytest.LogCaptureFixture,
                                          outbound: responses.RequestsMock) -> None:
    attacker = ec_key("attacker")
    outbound.get("https://attacker.example.net/jwks.json", json=jwks(attacker))
    jwt_token = token(attacker, iss=ROTATING_ISS, headers={"jku": "https://attacker.example.net/jwks.json"})
    resp = send(client, "POST", SERVICE, jwt_token=jwt_token)
    assert_rejected(resp, caplog, outbound, "jku header not listed for this client", jwt_token)


@pytest.mark.parametrize("signer", [lambda: ec_key("attacker"), trusted_ec], ids=["attacker-key", "trusted-key"])
def test_jku_is_never_fetched_for_a_client_with_static_keys(client: FlaskClient, caplog: pytest.LogCaptureFixture,
                                                            outbound: responses.RequestsMock,
                                                            signer: Callable[[], SigningKey]) -> None:
    """A client with a static key set and no ``jku`` list: any ``jku`` is refused, even on a token that
    its own key signed (the red-team run found such tokens accepted with any ``jku``)."""
    attacker = ec_key("attacker")
    outbound.get("https://attacker.example.net/jwks.json", json=jwks(attacker))
    jwt_token = token(signer(), headers={"jku": "https://attacker.example.net/jwks.json"})
    resp = send(client, "POST", SERVICE, jwt_token=jwt_token)
    assert_rejected(resp, caplog, outbound, "jku header sent, but this client lists no jku", jwt_token)


JKU_LISTED = "https://ehr.example.org/.well-known/jwks.json"


@pytest.mark.parametrize(("jku", "status"), [
    (JKU_LISTED, 200),
    (None, 200),  # no jku header at all: the static keys decide
    (JKU_LISTED + "?", 401),  # compared exactly
    ("https://EHR.example.org/.well-known/jwks.json", 401),
    ("https://attacker.example.net/jwks.json", 401),
    (["https://ehr.example.org/.well-known/jwks.json"], 401),  # not a string
], ids=["listed", "absent", "listed-plus-query", "other-case", "other-host", "array"])
def test_jku_list_of_a_static_key_client(build: Callable[..., Flask], caplog: pytest.LogCaptureFixture,
                                         outbound: responses.RequestsMock, jku: Any, status: int) -> None:
    clients = default_clients()
    clients[0]["jku"] = [JKU_LISTED]
    client = build(clients).test_client()
    jwt_token = token(headers={} if jku is None else {"jku": jku})
    resp = send(client, "POST", SERVICE, jwt_token=jwt_token, body=prefetched_body())
    assert resp.status_code == status
    if status == 401:
        assert_rejected(resp, caplog, outbound, "jku header not listed for this client", jwt_token)
    assert len(outbound.calls) == 0  # a listed jku is a label: never fetched


def test_the_jwks_url_is_an_accepted_jku_and_the_jku_list_adds_others(build: Callable[..., Flask],
                                                                     outbound: responses.RequestsMock) -> None:
    key = ec_key("rot-1")
    outbound.get(JWKS_URL, json=jwks(key))
    other = "https://keys-b.ehr.example.org/jwks.json"
    clients = default_clients()
    clients[2]["jku"] = other
    client = build(clients).test_client()
    for jku in (JWKS_URL, other):
        jwt_token = token(key, iss=ROTATING_ISS, path=DISCOVERY, headers={"jku": jku})
        assert send(client, "GET", DISCOVERY, jwt_token=jwt_token).status_code == 200
    assert [c.request.url for c in outbound.calls] == [JWKS_URL]  # the other jku is never fetched


@pytest.mark.parametrize("header", [
    {"jwk": "ATTACKER_JWK"},  # an embedded key (CVE-2018-0114 style)
    {"x5u": "https://attacker.example.net/cert.pem"},
    {"x5c": ["MIIB"]},
    {"jku": "https://attacker.example.net/jwks.json", "kid": "ehr-es384"},
], ids=["embedded-jwk", "x5u", "x5c", "jku-with-a-trusted-kid"])
def test_keys_named_in_the_header_are_never_used_or_fetched(client: FlaskClient, caplog: pytest.LogCaptureFixture,
                                                            outbound: responses.RequestsMock,
                                                            header: dict[str, Any]) -> None:
    attacker = SigningKey(trusted_ec().kid, "ES384", ec_key("attacker").private)
    outbound.get(re.compile(r"https://attacker\.example\.net/.*"), json=jwks(attacker))
    headers = {k: (attacker.public_jwk() if v == "ATTACKER_JWK" else v) for k, v in header.items()}
    jwt_token = token(attacker, headers=headers)
    resp = send(client, "POST", SERVICE, jwt_token=jwt_token)
    assert_rejected(resp, caplog, outbound, "jku" if "jku" in header else "bad signature", jwt_token)


@pytest.mark.parametrize("header", [{"crit": ["b64"], "b64": False}, {"crit": ["x-unknown"], "x-unknown": 1},
                                    {"crit": []}], ids=["b64", "unknown-extension", "empty"])
def test_critical_header_extensions_are_refused(client: FlaskClient, caplog: pytest.LogCaptureFixture,
                                                outbound: responses.RequestsMock, header: dict[str, Any]) -> None:
    jwt_token = token(headers=header)  # signed by the trusted key; RFC 7515 4.1.11: unknown crit must fail
    assert_rejected(send(client, "POST", SERVICE, jwt_token=jwt_token), caplog, outbound, "malformed token", jwt_token)


@pytest.mark.parametrize(("alg", "reason"), [
    ("es384", "algorithm not allowed: es384"), ("ES512", "algorithm not allowed: ES512"),
    ("PS384", "algorithm not allowed: PS384"), ("ES384\n", "algorithm not allowed: (not shown)"),
    ("<script>", "algorithm not allowed: (not shown)"),
], ids=["lower-case", "es512", "ps384", "newline", "markup"])
def test_algorithm_spellings_are_refused_and_logged_only_as_tokens(client: FlaskClient,
                                                                   caplog: pytest.LogCaptureFixture,
                                                                   outbound: responses.RequestsMock, alg: str,
                                                                   reason: str) -> None:
    forged = unsigned_token(claims_for(iss=ISS, aud=BASE + SERVICE, now=NOW), kid=trusted_ec().kid)
    head = json.loads(base64.urlsafe_b64decode(forged.split(".")[0] + "=="))
    head["alg"] = alg
    forged = base64.urlsafe_b64encode(json.dumps(head).encode()).rstrip(b"=").decode() + forged[forged.index("."):]
    resp = send(client, "POST", SERVICE, jwt_token=forged + "c2ln")
    assert_rejected(resp, caplog, outbound, reason, forged)
