"""The benchmark's floor: what HTTP + JSON cost on this machine, served exactly like the service.

A bare Flask app with one endpoint at the service's path: it reads the request body, JSON-parses it (as the
service must) and answers a fixed JSON body - the service's own answer for the same scenario, read once at
start-up from ``NMS_CDS_BENCH_FLOOR_BODY`` - so both apps move the same bytes in and out.

It decodes with the service's own decoder (:data:`DECODE`: the same JSON library, the cyclic GC paused the
same way), so a faster parser or decoding trick lowers both apps alike and the ratio to the floor measures
only the service's own work. The service's depth and surrogate checks are its own work, not the
floor's.

    NMS_CDS_BENCH_FLOOR_BODY=answer.json python bench/floor_app.py --port 8090 --workers 2

is served by :func:`cds_service.serve.gunicorn.run_server` itself (the function behind ``nms-cds serve``, used by the
Docker image), with its ``create_app`` swapped for :func:`create_floor_app`: same gunicorn workers, threads,
worker class, timeouts and keep-alive as the service, by construction.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from flask import Flask, Response, request

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The service's body decoder (cds_service.protocol.decode.load_json's fast path, after its checks) and its
# request-long pause of the cyclic collector (cds_service.watchdog.GcPause). If the service changes its JSON
# library or decoding, these must follow: the floor has to parse, and hold the parsed body, as the service does.
from cds_service.protocol.decode import loads_without_gc as DECODE  # noqa: E402
from cds_service.watchdog import GcPause  # noqa: E402

BODY_ENV = "NMS_CDS_BENCH_FLOOR_BODY"
DEFAULT_ANSWER = b'{"cards":[]}'


def create_floor_app(answer: bytes = DEFAULT_ANSWER) -> Flask:
    """Flask app: POST /cds-services/<id> → parse the JSON body, return ``answer`` (fixed bytes)."""
    app = Flask("nms_cds_floor")
    pause = GcPause()
    app.before_request(pause.enter)
    app.teardown_request(lambda exc: pause.exit())

    @app.post("/cds-services/<service_id>")
    def call(service_id: str) -> Response:
        body: Any = DECODE(request.get_data(cache=False))
        if not isinstance(body, dict):  # pragma: no cover - the bench sends objects only
            return Response(b'{"error":"invalid"}', status=400, mimetype="application/json")
        return Response(answer, mimetype="application/json")

    @app.get("/healthz")
    def health() -> Response:
        return Response(b'{"status":"ok"}', mimetype="application/json")

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    path = os.environ.get(BODY_ENV)
    answer = Path(path).read_bytes() if path else DEFAULT_ANSWER

    import cds_service.app
    from cds_service.config import AuthMode, Settings
    from cds_service.serve import gunicorn

    def create_app(settings: Settings | None = None) -> Flask:
        return create_floor_app(answer)

    # run_server imports create_app from cds_service.app when it loads the application: serve the floor instead.
    cds_service.app.create_app = create_app  # type: ignore[assignment]
    return gunicorn.run_server(Settings(auth=AuthMode.OFF), host=args.host, port=args.port, workers=args.workers,
                              threads=args.threads)


if __name__ == "__main__":
    sys.exit(main())
