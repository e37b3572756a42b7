"""``nms-cds`` command line: serve the service, and tools that play the EHR for developers.

Progress and errors go to stderr, results to stdout; exit codes: 0 ok, 1 failure, 2 usage error.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from cds_service import __version__, report
from cds_service.config import AuthMode, Settings
from cds_service.fhir.client import is_loopback


def run_server(settings: Settings, *, host: str, port: int, workers: int = 2, threads: int = 1,
               timeout: int | None = None, max_requests: int = 0, front: str | None = None,
               app_factory: str | None = None) -> int:
    """Serve ``create_app(settings)`` with gunicorn behind the nginx front (see :mod:`cds_service.serving`)
    until stopped. ``front`` overrides ``NMS_CDS_FRONT``; ``app_factory`` ("module:callable", called with
    the settings) replaces ``create_app`` (benchmark floor, tests)."""
    import importlib
    import shutil
    import tempfile
    from pathlib import Path

    from gunicorn.app.base import BaseApplication

    from cds_service import logs, metrics, serving

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
    logs.configure(settings.log_level)
    front = front or settings.front
    nginx = serving.nginx_binary() if front == "nginx" else None
    if front == "nginx" and nginx is None:
        if not settings.is_development:
            print("nms-cds: NMS_CDS_FRONT=nginx but no nginx binary was found (install the Debian package "
                  "nginx-light or nginx), or NMS_CDS_FRONT=none behind your own buffering proxy", file=sys.stderr)
            return 2
        serving.log.warning("nginx not found: development server without the buffering front",
                            extra={"event": "front-missing"})
    runtime = Path(tempfile.mkdtemp(prefix="nms-cds-serve-"))
    upstream = runtime / "app.sock"
    bind = f"unix:{upstream}" if nginx else f"{host}:{port}"
    worker_timeout = timeout or int(settings.request_timeout_seconds + 10)
    state: dict[str, object] = {"front": None, "funnel": None, "failed": False}
    master = os.getpid()
    if app_factory:
        module, _, attr = app_factory.partition(":")
        factory = getattr(importlib.import_module(module), attr)
    else:
        from cds_service.app import create_app as factory

    def when_ready(server: object) -> None:
        state["funnel"] = serving.OutputFunnel()
        logs.configure_process()
        serving.json_gunicorn_errors()
        # before the workers fork (they import prometheus_client on first use, in multiprocess mode)
        multiproc = Path(os.environ.get(metrics.MULTIPROC_ENV) or runtime / "prometheus")
        serving.clean_multiproc_dir(multiproc)
        os.environ[metrics.MULTIPROC_ENV] = str(multiproc)
        if nginx is None:
            serving.log.info(f"serving on {bind} without a front (NMS_CDS_FRONT=none): slow clients hold workers",
                             extra={"event": "serving", "front": "none", "bind": bind, "workers": workers,
                                    "threads": threads})
            return
        conf = runtime / "nginx.conf"
        conf.write_text(serving.nginx_conf(settings, host=host, port=port, upstream=upstream, runtime=runtime))
        proxy = serving.Front(nginx, conf, host=host, port=port)
        state["front"] = proxy
        try:
            proxy.start()
        except RuntimeError as exc:
            serving.log.error(str(exc), extra={"event": "front-failed"})
            state["failed"] = True
            os.kill(master, signal.SIGTERM)
            return

        def front_died(returncode: int | None) -> None:
            if returncode == 0:  # stopped by a signal to the process group (Ctrl-C, killpg): a normal stop
                serving.log.info("nginx front stopped; stopping", extra={"event": "front-stopped"})
            else:
                serving.log.error(f"nginx front exited with {returncode}; stopping", extra={"event": "front-failed"})
                state["failed"] = True
            os.kill(master, signal.SIGTERM)

        proxy.watch(front_died)
        serving.log.info(
            f"serving on {host}:{port} through nginx: headers within {settings.client_header_timeout_seconds:g} s, "
            f"body pauses up to {settings.client_body_timeout_seconds:g} s, keep-alive "
            f"{settings.keepalive_timeout_seconds:g} s, at most {settings.front_max_connections} connections, "
            f"requests stopped after {settings.request_timeout_seconds:g} s",
            extra={"event": "serving", "front": "nginx", "bind": f"{host}:{port}", "workers": workers,
                   "threads": threads})

    def child_exit(server: object, worker: object) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined,no-untyped-call]

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", bind)
            self.cfg.set("workers", workers)
            self.cfg.set("threads", threads)
            self.cfg.set("worker_class", "gthread" if threads > 1 else "sync")
            self.cfg.set("timeout", worker_timeout)
            self.cfg.set("graceful_timeout", 10)
            self.cfg.set("keepalive", max(1, int(settings.keepalive_timeout_seconds)))
            self.cfg.set("accesslog", None)
            self.cfg.set("errorlog", "-")
            self.cfg.set("loglevel", "info")
            self.cfg.set("logger_class", serving.gunicorn_logger_class())
            self.cfg.set("max_requests", max_requests)
            self.cfg.set("max_requests_jitter", max_requests // 10)
            self.cfg.set("when_ready", when_ready)
            self.cfg.set("child_exit", child_exit)
            if "control_socket_disable" in self.cfg.settings:  # gunicorn >= 25.1 writes ~/.gunicorn otherwise
                self.cfg.set("control_socket_disable", True)

        def load(self) -> object:
            return factory(settings)

    code: object = 0
    try:
        Server().run()
    except SystemExit as exc:
        if os.getpid() != master:  # a gunicorn worker leaving: not ours to clean up
            raise
        code = exc.code
    finally:
        if os.getpid() == master:
            proxy = state["front"]
            if isinstance(proxy, serving.Front):
                proxy.stop()
            funnel = state["funnel"]
            if isinstance(funnel, serving.OutputFunnel):
                funnel.close()
            shutil.rmtree(runtime, ignore_errors=True)
    if state["failed"]:
        return 1
    return code if isinstance(code, int) else (0 if code is None else 1)


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
                      timeout=args.timeout, max_requests=args.max_requests, front=args.front,
                      app_factory=args.app)


def build_parser(*, dev: bool = True) -> argparse.ArgumentParser:
    """The command parser; ``dev`` adds the developer commands (imports :mod:`cds_service.devtools`)."""
    parser = argparse.ArgumentParser(prog="nms-cds", description=__doc__)
    parser.add_argument("--version", action="version", version=f"nms-cds {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the CDS Hooks service with gunicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=2)
    serve.add_argument("--threads", type=int, default=1, help="threads per worker (gthread when > 1)")
    serve.add_argument("--timeout", type=int, default=None,
                       help="seconds before gunicorn restarts a stuck worker (default: NMS_CDS_REQUEST_TIMEOUT_SECONDS "
                            "+ 10; a request overrunning NMS_CDS_REQUEST_TIMEOUT_SECONDS answers 503 before that)")
    serve.add_argument("--front", choices=["nginx", "none"], default=None,
                       help="buffering front (default NMS_CDS_FRONT, 'nginx'); 'none' only behind another proxy")
    serve.add_argument("--app", default=None, help=argparse.SUPPRESS)  # module:factory(settings), for tests
    serve.add_argument("--max-requests", type=int, default=0, help="recycle a worker after N requests (0: never)")
    serve.set_defaults(func=_serve)
    if dev:
        from cds_service.devtools import tools

        tools.register(sub)
    report.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    # `nms-cds serve` never imports the developer tooling: production code does not depend on it.
    parser = build_parser(dev=not (arguments and arguments[0] == "serve"))
    args = parser.parse_args(arguments)
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
