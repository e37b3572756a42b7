"""The front's header-only authentication pass: nginx asks it (``auth_request``) before it reads a request body,
so an unauthenticated request never makes the front buffer or spool a body.

Only the nginx front reaches it: the wrapper is installed when ``nms-cds serve`` runs the front (gunicorn then
listens on a private Unix socket), and nginx marks the location ``internal``. It verifies the CDS client JWT
from the headers (signature, issuer, audience of the original URL, times) but does not claim the ``jti``: the
real request does, so a token is still accepted exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

from cds_service import metrics
from cds_service.errors import Unauthorized
from cds_service.runtime import Runtime

log = logging.getLogger("cds_service.auth")

AUTH_PATH = "/_nms_cds/auth"
MAX_URI_CHARS = 2048
StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def _has_body(environ: dict[str, Any]) -> bool:
    length = environ.get("HTTP_X_ORIGINAL_CONTENT_LENGTH", "")
    return length not in ("", "0") or bool(environ.get("HTTP_X_ORIGINAL_TRANSFER_ENCODING"))


def check(app: Any, environ: dict[str, Any]) -> int:
    """204 when the original request may send its body on, 401 when it may not, 500 on a failure here."""
    method = environ.get("HTTP_X_ORIGINAL_METHOD", "")
    if method == "OPTIONS" and not _has_body(environ):
        return 204  # a CORS preflight carries no credentials by definition; the service answers it
    uri = environ.get("HTTP_X_ORIGINAL_URI", "")
    if not uri.startswith("/") or len(uri) > MAX_URI_CHARS:
        return 401
    rt = getattr(app, "extensions", {}).get("nms_cds")
    if not isinstance(rt, Runtime):
        return 204  # an app of its own (--app: benchmark floor, tests) authenticates itself, if at all
    audience = rt.settings.public_base_url + unquote(urlsplit(uri).path)
    try:
        rt.authenticator.verify(environ.get("HTTP_AUTHORIZATION"), audience, claim=False)
    except Unauthorized as exc:
        log.warning("unauthorized (before the body)", extra={"event": "auth-failed", "reason": exc.reason})
        metrics.auth_failure(exc.reason)
        return 401
    except Exception as exc:  # the type only: the front answers 500 and the body is never read
        log.error("front authentication pass failed", extra={"event": "internal-error",
                                                             "error": type(exc).__name__})
        return 500
    return 204


def wrap(app: Any) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """``app`` with the authentication pass answered before Flask's routing (no request log line, no body)."""

    def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != AUTH_PATH:
            result: Iterable[bytes] = app(environ, start_response)
            return result
        status = check(app, environ)
        reason = {204: "No Content", 401: "Unauthorized"}.get(status, "Internal Server Error")
        start_response(f"{status} {reason}", [("Content-Length", "0"), ("Cache-Control", "no-store")])
        return [b""]

    return application
