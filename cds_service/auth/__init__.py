"""Authentication of the calling CDS client (CDS Hooks 2.0 "Trusting CDS Clients").

``NMS_CDS_AUTH=jwt`` (default): every route (discovery, service, feedback) needs
``Authorization: Bearer <JWT>`` signed by a client listed in ``NMS_CDS_TRUSTED_CLIENTS``, a JSON file::

    [
      {"iss": "https://ehr.example.org", "jwks_url": "https://ehr.example.org/.well-known/jwks.json",
       "tenant": "optional-tenant-id", "policy": {"mode": "silent"}},
      {"iss": "https://sandbox.cds-hooks.org", "jwks": {"keys": [ ...public JWKs... ]},
       "jku": ["https://sandbox.cds-hooks.org/.well-known/jwks.json"]}
    ]

A token is accepted only when, in this order:

1. the header is a JWS header with an asymmetric ``alg`` from :data:`ALLOWED_ALGORITHMS` (never ``none``,
   never HS*), ``typ`` ``JWT`` when present, and a ``kid``;
2. ``iss`` is a trusted client; a ``jku`` header must be one of the client's listed values (its ``jwks_url``
   and its ``jku`` list; none listed: any ``jku`` is refused). The service never fetches a URL named by a
   token: only the allowlisted ``jwks_url``;
3. ``kid`` names a key of that client (static ``jwks``, then the cached ``jwks_url`` set, refreshed on an
   unknown ``kid`` at most once per ``NMS_CDS_JWKS_REFRESH_MIN_INTERVAL_SECONDS``; a refresh without a
   usable key keeps the cached keys, and no lock is held while fetching), the key suits ``alg``
   and the signature verifies (:func:`jwt.decode` with the key's own algorithm as the only one allowed);
4. PyJWT, in the same :func:`jwt.decode`: ``aud``, ``exp``, ``iat`` and ``jti`` are present, ``aud`` (string or
   list) contains the exact endpoint URL built from ``NMS_CDS_PUBLIC_BASE_URL``, ``iss`` is the client's and
   ``jti`` a string;
5. the project's policy (``verify.py``), on the service clock (injectable; PyJWT reads the wall clock): ``exp``
   and ``iat`` are numbers, ``exp`` not past, ``iat`` not in the future, ``nbf`` (if present) reached, all with
   ``NMS_CDS_JWT_LEEWAY_SECONDS``; ``exp - iat`` at most ``NMS_CDS_JWT_MAX_LIFETIME_SECONDS``; ``jti`` at most
   256 characters; ``tenant`` equals the configured one, when configured;
6. ``(iss, jti)`` was not seen before (the replay cache keeps it until ``exp`` + leeway).

Any failure raises :class:`~cds_service.errors.Unauthorized` whose ``reason`` is for the server log only;
the HTTP answer is a bare 401. The token itself is never logged; ``iss`` and ``jti`` may be.

``NMS_CDS_AUTH=off``: development only; ``create_app`` logs a warning and ``nms-cds serve`` refuses a
non-loopback bind unless ``NMS_CDS_AUTH_OFF_FORCE=true``.
"""

# keys.py: the JWK rules; clients.py: the trusted clients file; jwks.py: remote key sets; verify.py: the checks;
# policy.py: what each client gets (per-client policy).
from cds_service.auth.clients import TrustedClient, TrustedClientsError, load_trusted_clients
from cds_service.auth.keys import ALLOWED_ALGORITHMS, VerificationKey, parse_jwk, parse_jwks
from cds_service.auth.verify import Authenticator
from cds_service.store.memory import ReplayCache

__all__ = [
    "ALLOWED_ALGORITHMS",
    "Authenticator",
    "ReplayCache",
    "TrustedClient",
    "TrustedClientsError",
    "VerificationKey",
    "load_trusted_clients",
    "parse_jwk",
    "parse_jwks",
]
