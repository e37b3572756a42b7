"""Tokens shaped as the EHR vendors document them (docs/ehr-integration.md) pass the service's checks with the
trusted-client entry that page recommends: Epic (RS384, ``jku`` = the organization's PublicKeys URL, ``nbf`` five
minutes before ``iat``, ``sub``, 15 minutes) and Oracle Health (``iss`` https://cds-hooks.cerner.com, keys from
https://authorization.cerner.com/jwk). The key URLs are answered by ``responses``; nothing leaves the machine."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import responses
from flask import Flask

from tests.helpers.jwt_helpers import jwks, rsa_key
from tests.helpers.security import (  # noqa: F401  (fixtures)
    DISCOVERY,
    NOW,
    SERVICE,
    build,
    outbound,
    prefetched_body,
    send,
    token,
)

EPIC_ISS = "https://fhir.hospital.example.org/interconnect-fhir/api/FHIR/R4"
EPIC_JKU = "https://fhir.hospital.example.org/interconnect-fhir/api/epic/2019/Security/Open/PublicKeys/530013/530013"
ORACLE_ISS = "https://cds-hooks.cerner.com"
ORACLE_JWKS = "https://authorization.cerner.com/jwk"


def calls(app: Flask, key: Any, iss: str, headers: dict[str, str], **claims: Any) -> list[int]:
    client = app.test_client()
    statuses = []
    for path in (DISCOVERY, SERVICE):
        jwt_token = token(key, iss=iss, path=path, headers=headers, **claims)
        method = "GET" if path == DISCOVERY else "POST"
        statuses.append(send(client, method, path, jwt_token=jwt_token,
                             body=prefetched_body() if method == "POST" else None).status_code)
    return statuses


def test_an_epic_shaped_token_is_accepted(build: Callable[..., Flask],  # noqa: F811  (the fixtures above)
                                          outbound: responses.RequestsMock) -> None:  # noqa: F811
    key = rsa_key("d3bmo5HzW61TUgikHZH+A8Tx4UOXz2iOs4KvVU4eLY0=", "RS384")
    outbound.get(EPIC_JKU, json=jwks(key))
    app = build([{"iss": EPIC_ISS, "jwks_url": EPIC_JKU}])
    assert calls(app, key, EPIC_ISS, {"jku": EPIC_JKU}, lifetime=900, nbf=int(NOW) - 300,
                 sub="epic-cds-client-id") == [200, 200]
    assert [c.request.url for c in outbound.calls] == [EPIC_JKU]  # fetched once, then cached


def test_an_oracle_health_shaped_token_is_accepted(build: Callable[..., Flask],  # noqa: F811
                                                   outbound: responses.RequestsMock) -> None:  # noqa: F811
    key = rsa_key("oracle-cds-1", "RS384")
    outbound.get(ORACLE_JWKS, json=jwks(key))
    app = build([{"iss": ORACLE_ISS, "jwks_url": ORACLE_JWKS}])
    assert calls(app, key, ORACLE_ISS, {"jku": ORACLE_JWKS}) == [200, 200]
    assert calls(app, key, ORACLE_ISS, {}) == [200, 200]  # a token without jku is fine too
