"""Application factory: ``create_app(settings=None)`` builds the Flask app (Flask tutorial style)."""

from __future__ import annotations

import gc
import logging

from flask import Flask

from cds_service import logs, web
from cds_service.clinical.valuesets import using
from cds_service.config import AuthMode, Settings
from cds_service.config_report import load_settings, unknown_variables
from cds_service.fhir.bounds import windows
from cds_service.fhir.client import log_outbound_config
from cds_service.runtime import Runtime
from cds_service.services.templates import prefetch_templates

log = logging.getLogger("cds_service.app")


def create_app(settings: Settings | None = None) -> Flask:
    """The app for ``settings``, else for the environment (:class:`cds_service.errors.ConfigError` if invalid)."""
    notes = unknown_variables() if settings is None else []
    settings = settings if settings is not None else load_settings()
    logs.configure(settings.log_level)
    for note in [*notes, *settings.warnings()]:
        log.warning(note, extra={"event": "config-warning"})
    runtime = Runtime.build(settings)  # reads the site file (NMS_CDS_SITE_FILE) once
    with using(runtime.knowledge.site):  # parse the terminology once at start-up, not on the first request
        prefetch_templates()
        windows()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.extensions["nms_cds"] = runtime
    log_outbound_config(settings)
    web.register(app)
    # Start-up objects (value sets, templates, models) live for the whole process: move them out of the
    # cyclic collector's generations so that collections during requests do not walk them again.
    gc.freeze()
    if settings.auth == AuthMode.OFF:
        log.warning("authentication is OFF: development only", extra={"event": "auth-off"})
    return app
