"""Start-up: a bad or missing trusted clients file stops create_app; auth=off and plain-http base URLs are
warned about."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from cds_service.app import create_app
from cds_service.auth import TrustedClientsError
from tests.conftest import dataset_json, make_settings
from tests.helpers import security
from tests.helpers.jwt_helpers import (
    jwks,
    rsa_key,
    write_trusted_clients,
)
from tests.helpers.security import (
    ISS,
    JWKS_URL,
    SPEC_ISS,
)

# the shared fixtures: a JWT-mode app factory, its app and client, recorded outbound calls, debug logs
_debug_logs, app, build, client, outbound = (security._debug_logs, security.app, security.build, security.client,
                                             security.outbound)


# --- start-up: trusted clients file, auth=off ---------------------------------------------------------

PRIVATE_D = "SeFXUXda8UomZ8GFUl7HH_Oi15rIbfMcsWj9ecIsDR8kLbqsEz2CGNgwy_IcILxy"


@pytest.mark.parametrize(("content", "fragment"), [
    (None, "does not exist"),
    ("{not json", "not valid JSON"),
    ('{"iss": "x"}', "JSON array"),
    ("[]", "lists no clients"),
    ('[{"jwks": {"keys": []}}]', "no 'iss'"),
    ('[{"iss": "https://a.example"}]', "needs 'jwks'"),
    ('[{"iss": "https://a.example", "jwks_url": "http://keys.example/jwks.json"}]', "https"),
    ('[{"iss": "https://a.example", "jwks": {"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}}]',
     "private or symmetric"),
    ("PRIVATE", "private or symmetric"),
    ('[{"iss": "https://a.example", "jwks": {"keys": [{"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}]}}]',
     "no 'kid'"),
    ('[{"iss": "https://a.example", "jwks": {"keys": [{"kty": "EC", "kid": "k", "crv": "P-384", "x": "AA", '
     '"y": "AA"}]}}]', "not a valid EC public key"),
    ('[{"iss": "https://a.example", "jwks": {"keys": [{"kty": "EC", "kid": "k", "crv": "P-521", "x": "AA", '
     '"y": "AA"}]}}]', "unsupported curve"),
    ("DUPLICATE", "repeats an issuer"),
    ('[{"iss": "https://a.example", "jwks_url": "https://k.example/j", "tenant": 7}]', "'tenant'"),
    ('[{"iss": "https://a.example", "jwks_url": "https://k.example/j", "keys": {}}]', "unknown member"),
    ('[{"iss": "https://a.example", "jwks_url": "https://k.example/j", "jku": "http://k.example/j"}]',
     "'jku' must use"),
    ('[{"iss": "https://a.example", "jwks_url": "https://k.example/j", "jku": []}]', "'jku' must be a URL or"),
    ('[{"iss": "https://a.example", "jwks_url": "https://k.example/j", "jku": ["https://u:p@k.example/"]}]',
     "credentials"),
], ids=["missing", "bad-json", "not-array", "empty", "no-iss", "no-keys", "http-jwks-url", "oct-key",
        "private-key", "no-kid", "bad-point", "p521", "duplicate-iss", "tenant-not-string", "unknown-member",
        "jku-http", "jku-empty", "jku-credentials"])
def test_create_app_fails_fast_on_a_bad_trusted_clients_file(tmp_path: Path, content: str | None,
                                                             fragment: str) -> None:
    path = tmp_path / "trusted.json"
    if content == "PRIVATE":
        content = json.dumps([{"iss": SPEC_ISS, "jwks": {"keys": [dataset_json(
            "cds-hooks-spec-examples/cds-hooks--index--block27-fragment.json")]}}])
    elif content == "DUPLICATE":
        content = json.dumps([{"iss": ISS, "jwks_url": JWKS_URL}, {"iss": ISS, "jwks_url": JWKS_URL}])
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(TrustedClientsError) as excinfo:
        create_app(make_settings(auth="jwt", trusted_clients=path))
    message = str(excinfo.value)
    assert fragment in message
    assert str(path) in message
    assert PRIVATE_D not in message and "c2VjcmV0" not in message


def test_create_app_fails_fast_without_a_trusted_clients_setting() -> None:
    with pytest.raises(TrustedClientsError, match="NMS_CDS_TRUSTED_CLIENTS"):
        create_app(make_settings(auth="jwt", trusted_clients=None))


def test_short_rsa_keys_are_refused(tmp_path: Path) -> None:
    path = write_trusted_clients(tmp_path / "t.json", [{"iss": ISS, "jwks": jwks(rsa_key("weak", "RS384", 1024))}])
    with pytest.raises(TrustedClientsError, match="shorter than 2048"):
        create_app(make_settings(auth="jwt", trusted_clients=path))


def test_auth_off_logs_a_warning_at_start(caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(make_settings(auth="off"))
    app.extensions["nms_cds"].close()
    assert any(r.levelno == logging.WARNING and getattr(r, "event", None) == "auth-off" for r in caplog.records)



def test_plain_http_public_base_url_is_warned_about_in_production(build: Callable[..., Flask],
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    build(public_base_url="http://cds.example.org")
    assert any(getattr(r, "event", None) == "config-warning" and "https" in r.getMessage() for r in caplog.records)
