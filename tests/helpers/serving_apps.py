"""App factories for ``nms-cds serve --app tests.helpers.serving_apps:NAME`` in tests/system/test_serving.py: the real
app plus routes that misbehave on purpose (a request that never ends, a warning, stray output, a thread crash)."""

from __future__ import annotations

import os
import sys
import threading
import time
import warnings

from flask import Flask, Response, jsonify

from cds_service.app import create_app
from cds_service.config import Settings


def spinning_app(settings: Settings) -> Flask:
    app = create_app(settings)

    @app.get("/test/pid")
    def pid() -> Response:
        return jsonify({"pid": os.getpid()})

    @app.get("/test/sleep")
    def sleep() -> Response:
        time.sleep(0.3)  # long enough that concurrent calls spread over the workers
        return jsonify({"pid": os.getpid()})

    @app.get("/test/spin")
    def spin() -> Response:
        n = 0
        while True:  # pure Python, never ends: only the watchdog stops it
            n += 1

    @app.get("/test/block")
    def block() -> Response:
        time.sleep(120)  # one C call: the watchdog cannot interrupt it, gunicorn's timeout ends the worker
        return jsonify({"ok": True})

    @app.get("/test/warn")
    def warn() -> Response:
        warnings.warn("a library warning", UserWarning, stacklevel=1)
        return jsonify({"ok": True})

    @app.get("/test/print")
    def stray_output() -> Response:
        print("plain text on stdout")
        sys.stderr.write("plain text on stderr\nsecond line\n")
        sys.stderr.flush()

        def crash() -> None:
            raise ZeroDivisionError("secret-in-exception")

        thread = threading.Thread(target=crash)
        thread.start()
        thread.join()
        sys.stdout.flush()
        return jsonify({"ok": True})

    return app


def broken_app(settings: Settings) -> Flask:
    raise RuntimeError("boot failure")
