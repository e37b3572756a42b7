"""The Flask surface: the CDS Hooks routes, the operations routes, the SMART trend view, the middleware and the
JSON errors."""

from __future__ import annotations

from flask import Flask

from cds_service.web import errors, hooks, middleware, ops, trend_app, worklist


def register(app: Flask) -> None:
    """Every route, the per-request middleware and the error handlers, on ``app``."""
    app.register_blueprint(hooks.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(trend_app.bp)
    app.register_blueprint(worklist.bp)
    middleware.register(app)
    errors.register(app)
