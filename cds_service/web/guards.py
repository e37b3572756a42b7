"""What a CDS Hooks route checks before its work: the caller (JWT) and the body (size, then decode); and the
Runtime the routes hold (``app.extensions["nms_cds"]``)."""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from cds_service.errors import PayloadTooLarge
from cds_service.protocol.decode import load_json, reject_lone_surrogates
from cds_service.runtime import Runtime


def runtime_of(app: Flask) -> Runtime:
    rt: Runtime = app.extensions["nms_cds"]
    return rt


def runtime() -> Runtime:
    rt: Runtime = current_app.extensions["nms_cds"]
    return rt


def authenticate(path: str) -> None:
    """The caller's JWT for ``path`` (:mod:`cds_service.auth`); its ``iss`` and ``jti`` kept for the logs."""
    rt = runtime()
    claims = rt.authenticator.verify(request.headers.get("Authorization"), rt.settings.public_base_url + path)
    if claims:
        g.iss = claims.get("iss")
        g.jti = claims.get("jti")


def body() -> Any:
    """The request body as JSON, within the size cap (checked before reading) and the decode checks."""
    rt = runtime()
    length = request.content_length
    if length is not None and length > rt.settings.max_body_bytes:
        raise PayloadTooLarge(f"request body larger than {rt.settings.max_body_bytes} bytes")
    try:
        data = request.get_data(cache=False)
    except RequestEntityTooLarge as exc:
        raise PayloadTooLarge(f"request body larger than {rt.settings.max_body_bytes} bytes") from exc
    if len(data) > rt.settings.max_body_bytes:
        raise PayloadTooLarge(f"request body larger than {rt.settings.max_body_bytes} bytes")
    parsed = load_json(data, max_depth=rt.settings.max_json_depth, max_items=rt.settings.max_json_items)
    reject_lone_surrogates(data, parsed)
    return parsed
