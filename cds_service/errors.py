"""The one exception tree of nms-cds.

::

    NmsCdsError
    ├── ConfigError             settings that cannot be used; ``problems``: one line each, naming the variable,
    │   │                       the value's problem and the accepted form. ``load_settings()`` and ``create_app()``
    │   │                       raise it before anything starts; the command line prints it and exits 2
    │   └── TrustedClientsError the NMS_CDS_TRUSTED_CLIENTS file is missing or invalid (cds_service.auth)
    ├── UsageError              a command-line problem (a missing --request file or --fixtures folder, a port
    │                           already in use): one line, exit 2
    ├── RequestError            a problem with what the CDS client sent; mapped to a 4xx JSON answer
    │   ├── BadRequest          400  malformed JSON, missing or mistyped field, nesting too deep
    │   ├── Unauthorized        401  JWT missing or invalid (body carries no detail)
    │   ├── NotFound            404  unknown service id or route
    │   ├── PayloadTooLarge     413  body above NMS_CDS_MAX_BODY_BYTES
    │   ├── PreconditionFailed  412  required FHIR data could be had neither from prefetch nor the server
    │   ├── QuotaExceeded       429  the client's feedback quota (per hour or in total) is used up; Retry-After
    │   └── ServiceOverrun      503  the request ran past NMS_CDS_REQUEST_TIMEOUT_SECONDS and was stopped
    ├── StoreUnavailable        the database (or Redis) could not be used; mapped to 503 with the cause in
    │                           words (never a path, URL or secret), so the client sends the same data again
    └── FhirError               a problem talking to the EHR's FHIR server; never reaches the client as is:
        │                       the service layer degrades the answer or raises PreconditionFailed
        ├── FhirNotAllowed      the URL is outside NMS_CDS_FHIR_ALLOWLIST, not https, or a redirect off-site
        ├── FhirTimeout         connect/read timeout, or the hook's total budget ran out
        ├── FhirConnectionError connection refused or reset
        │   └── FhirTlsError    TLS handshake failed, e.g. certificate verify failed (CA not trusted)
        ├── FhirHttpError       a non-2xx answer (``status`` attribute)
        │   ├── FhirAuthError   401 or 403
        │   └── FhirNotFound    404
        └── FhirBadResponse     not JSON, truncated, too large, wrong resourceType, an OperationOutcome

Every exception carries a message that is safe to log and to return: no tokens, no patient data.
"""

from __future__ import annotations


class NmsCdsError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(NmsCdsError):
    """The configuration cannot be used. ``str()`` is the problems, one per line."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class UsageError(NmsCdsError):
    """A command-line argument cannot be used; the message is the one line ``nms-cds`` prints (exit 2)."""


class RequestError(NmsCdsError):
    status: int = 400
    code: str = "invalid"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class BadRequest(RequestError):
    status = 400
    code = "invalid"


class Unauthorized(RequestError):
    status = 401
    code = "security"

    def __init__(self, reason: str = "unauthorized") -> None:
        # ``reason`` is for the server log only; the response never carries it.
        super().__init__("unauthorized")
        self.reason = reason


class NotFound(RequestError):
    status = 404
    code = "not-found"


class PayloadTooLarge(RequestError):
    status = 413
    code = "too-costly"


class PreconditionFailed(RequestError):
    status = 412
    code = "processing"


class QuotaExceeded(RequestError):
    """429: the client's feedback quota is used up; ``retry_after`` seconds until it may send again."""

    status = 429
    code = "throttled"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreUnavailable(NmsCdsError):
    """The store could not do its work; nothing of the operation was kept. ``cause`` is safe to return."""

    status = 503
    code = "store-unavailable"

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause
        self.message = cause


class FhirError(NmsCdsError):
    """Outbound FHIR failure. ``url`` is the base-relative path only (no query values, no host secrets)."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.url = url


class FhirNotAllowed(FhirError):
    pass


class FhirTimeout(FhirError):
    pass


class FhirConnectionError(FhirError):
    pass


class FhirTlsError(FhirConnectionError):
    """The TLS handshake failed; the message names why (``certificate verify failed (...)``)."""


class FhirHttpError(FhirError):
    def __init__(self, message: str, *, status: int, url: str | None = None) -> None:
        super().__init__(message, url=url)
        self.status = status


class FhirAuthError(FhirHttpError):
    pass


class FhirNotFound(FhirHttpError):
    pass


class FhirBadResponse(FhirError):
    pass


class ServiceOverrun(RequestError):
    """503: the request was still running at ``NMS_CDS_REQUEST_TIMEOUT_SECONDS`` and was stopped (the worker
    goes on). Raised asynchronously in the request's thread by :mod:`cds_service.watchdog`."""

    status = 503
    code = "timeout"

    def __init__(self, message: str = "the request took longer than the service allows; it was stopped") -> None:
        super().__init__(message)
