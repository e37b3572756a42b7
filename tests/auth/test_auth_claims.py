"""The claim checks of the client JWT, one fault at a time, with the exact reason the server logs.

PyJWT checks the presence of ``aud``/``exp``/``iat``/``jti``, the ``aud`` match and the ``iss``; its exceptions are
mapped to the reasons below, which were recorded from the hand-written checks before the move. The time claims
(against the injectable clock), the lifetime cap, the ``jti`` length and the tenant stay the project's own.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest

from cds_service.auth import Authenticator
from cds_service.errors import Unauthorized
from tests.conftest import make_settings
from tests.helpers.jwt_helpers import ec_key, jwks, write_trusted_clients

ISS = "https://ehr.example.org"
BASE = "https://cds.example.org"
AUD = BASE + "/cds-services/nms-warning"
NOW = 1_790_000_000
MISSING = object()

AUD_FORMAT = "aud claim missing or not a string/array of strings"
AUD_MISMATCH = "aud does not match this endpoint"
EXP = "exp claim missing or not a number"
IAT = "iat claim missing or not a number"
JTI = "jti claim missing or not a short string"


@pytest.fixture
def authenticator(tmp_path: Path) -> Authenticator:
    path = write_trusted_clients(tmp_path / "clients.json",
                                 [{"iss": ISS, "jwks": jwks(ec_key("ec-384")), "tenant": "hospital-a"}])
    settings = make_settings(auth="jwt", trusted_clients=path, public_base_url=BASE)
    return Authenticator(settings, clock=lambda: float(NOW))


def sign(key_kid: str = "ec-384", **changes: Any) -> str:
    payload: dict[str, Any] = {"iss": ISS, "aud": AUD, "iat": NOW, "exp": NOW + 300, "jti": str(uuid.uuid4()),
                               "tenant": "hospital-a"}
    for name, value in changes.items():
        if value is MISSING:
            payload.pop(name, None)
        else:
            payload[name] = value
    return jwt.encode(payload, ec_key(key_kid).private, algorithm="ES384", headers={"typ": "JWT", "kid": "ec-384"})


def reason(authenticator: Authenticator, token: str) -> str:
    with pytest.raises(Unauthorized) as excinfo:
        authenticator.verify(f"Bearer {token}", AUD)
    return excinfo.value.reason


@pytest.mark.parametrize(("changes", "expected"), [
    ({"aud": MISSING}, AUD_FORMAT),
    ({"aud": None}, AUD_FORMAT),
    ({"aud": []}, AUD_FORMAT),
    ({"aud": 7}, AUD_FORMAT),
    ({"aud": {"url": AUD}}, AUD_FORMAT),
    ({"aud": [AUD, 7]}, AUD_FORMAT),
    ({"aud": BASE + "/cds-services"}, AUD_MISMATCH),
    ({"aud": AUD + "/"}, AUD_MISMATCH),
    ({"aud": [BASE, BASE + "/cds-services"]}, AUD_MISMATCH),
    ({"exp": MISSING}, EXP),
    ({"exp": None}, EXP),
    ({"exp": "tomorrow"}, EXP),
    ({"exp": str(NOW + 300)}, EXP),
    ({"exp": True}, EXP),
    ({"exp": float("inf")}, EXP),
    ({"iat": MISSING}, IAT),
    ({"iat": None}, IAT),
    ({"iat": "now"}, IAT),
    ({"iat": str(NOW)}, IAT),
    ({"jti": MISSING}, JTI),
    ({"jti": None}, JTI),
    ({"jti": ""}, JTI),
    ({"jti": 5}, JTI),
    ({"jti": ["a"]}, JTI),
    ({"jti": "j" * 257}, JTI),
    ({"iat": NOW - 400, "exp": NOW - 31}, "token expired"),
    ({"iat": NOW + 31, "exp": NOW + 331}, "token issued in the future (iat)"),
    ({"nbf": NOW + 31}, "token not yet valid (nbf)"),
    ({"nbf": "soon"}, "nbf claim not a number"),
    ({"nbf": None}, "nbf claim not a number"),
    ({"iat": NOW + 20, "exp": NOW + 10}, "exp before iat"),
    ({"exp": NOW + 3601}, "token lifetime above 3600 s"),
    ({"tenant": "hospital-b"}, "tenant does not match the trusted client's"),
    ({"tenant": MISSING}, "tenant does not match the trusted client's"),
], ids=lambda value: None if isinstance(value, dict) else value)
def test_one_fault_one_reason(authenticator: Authenticator, changes: dict[str, Any], expected: str) -> None:
    assert reason(authenticator, sign(**changes)) == expected


@pytest.mark.parametrize("changes", [
    {},
    {"aud": [BASE, AUD]},
    {"jti": "j" * 256},
    {"exp": NOW + 3600},
    {"iat": NOW + 29, "exp": NOW + 329},
    {"iat": NOW - 400, "exp": NOW - 29},
    {"nbf": NOW + 29},
    {"sub": 5},  # CDS Hooks defines no sub: not checked
    {"iat": NOW + 0.5, "exp": NOW + 300.5},
], ids=["plain", "aud-list", "jti-256", "lifetime-1h", "iat-within-leeway", "exp-within-leeway", "nbf-within-leeway",
        "sub-not-a-string", "fractional-times"])
def test_accepted(authenticator: Authenticator, changes: dict[str, Any]) -> None:
    token = sign(**changes)
    claims = authenticator.verify(f"Bearer {token}", AUD)
    assert claims == jwt.decode(token, options={"verify_signature": False})


def test_an_empty_aud_is_refused(authenticator: Authenticator) -> None:
    # Before PyJWT checked aud the reason was AUD_MISMATCH; PyJWT calls an empty aud missing.
    assert reason(authenticator, sign(aud="")) in {AUD_FORMAT, AUD_MISMATCH}


@pytest.mark.parametrize("changes", [{}, {"aud": MISSING}, {"jti": MISSING, "exp": "x"}])
def test_the_signature_is_checked_before_any_claim(authenticator: Authenticator, changes: dict[str, Any]) -> None:
    assert reason(authenticator, sign("other-key", **changes)) == "bad signature"
