"""``nms-cds`` command line: serve the service, and tools that play the EHR for developers.

Progress and errors go to stderr, results to stdout; exit codes: 0 ok, 1 failure, 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cds_service import __version__, report, tools
from cds_service.config import AuthMode, Settings
from cds_service.fhir.client import is_loopback


def run_server(settings: Settings, *, host: str, port: int, workers: int = 2, threads: int = 1,
               timeout: int = 30, max_requests: int = 0) -> int:
    """Serve ``create_app(settings)`` with gunicorn (the production WSGI server) until stopped."""
    from gunicorn.app.base import BaseApplication

    from cds_service.app import create_app

    if settings.auth == AuthMode.OFF and not (is_loopback(host) or settings.auth_off_force):
        print(f"refusing to serve with NMS_CDS_AUTH=off on non-loopback host {host}; "
              "set NMS_CDS_AUTH_OFF_FORCE=true to override (never in production)", file=sys.stderr)
        return 2
    if settings.auth == AuthMode.JWT:
        from cds_service.auth import TrustedClientsError, load_trusted_clients

        try:  # fail fast with one clear line instead of a traceback per gunicorn worker
            load_trusted_clients(settings.trusted_clients)
        except TrustedClientsError as exc:
            print(f"nms-cds: {exc}", file=sys.stderr)
            return 2
    if not _store_ready(settings):
        return 1

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("threads", threads)
            self.cfg.set("worker_class", "gthread" if threads > 1 else "sync")
            self.cfg.set("timeout", timeout)
            self.cfg.set("graceful_timeout", 10)
            self.cfg.set("keepalive", 5)
            self.cfg.set("accesslog", None)
            self.cfg.set("max_requests", max_requests)
            self.cfg.set("max_requests_jitter", max_requests // 10)

        def load(self) -> object:
            return create_app(settings)

    Server().run()
    return 0


def _store_ready(settings: Settings) -> bool:
    """Open the store once before any worker starts: migrations run here, and a store that cannot be used
    is one clear line (the cause, never a path or URL) instead of a traceback per gunicorn worker."""
    from cds_service.errors import StoreUnavailable
    from cds_service.store import open_store

    try:
        open_store(settings).close()
    except StoreUnavailable as exc:
        print(f"nms-cds: store unavailable: {exc.cause}", file=sys.stderr)
        return False
    return True


def _serve(args: argparse.Namespace) -> int:
    return run_server(Settings(), host=args.host, port=args.port, workers=args.workers, threads=args.threads,
                      timeout=args.timeout, max_requests=args.max_requests)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nms-cds", description=__doc__)
    parser.add_argument("--version", action="version", version=f"nms-cds {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the CDS Hooks service with gunicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=2)
    serve.add_argument("--threads", type=int, default=1, help="threads per worker (gthread when > 1)")
    serve.add_argument("--timeout", type=int, default=30, help="seconds before a stuck worker is restarted")
    serve.add_argument("--max-requests", type=int, default=0, help="recycle a worker after N requests (0: never)")
    serve.set_defaults(func=_serve)
    tools.register(sub)
    report.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
