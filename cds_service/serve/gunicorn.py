"""``nms-cds serve``: the gunicorn master and its workers, the nginx front started once the socket is bound,
the store opened (and migrated) once before the fork."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from cds_service.config import AuthMode, Settings
from cds_service.net.urls import is_loopback
from cds_service.protocol.outcome import operation_outcome
from cds_service.serve import front as front_
from cds_service.serve import frontauth, output

log = logging.getLogger("cds_service.serve")

FRONT_STOP_GRACE_SECONDS = 1.0  # see front_died in run_server


def _ignore_terminal_sigint(worker: Any) -> None:
    """gunicorn ``post_worker_init``: a worker leaves Ctrl-C to the master and acts on one stop signal only.

    A terminal's Ctrl-C reaches the master and every worker at once; the master then sends the workers
    SIGQUIT, and the nginx front's exit makes it send SIGTERM too. A second stop signal re-entered the gthread
    worker's shutdown (non-reentrant locks in ``ThreadPoolExecutor.shutdown`` and its method queue), so the
    worker hung until the master's SIGKILL ten seconds later. Workers ignore SIGINT, and after the first
    SIGQUIT or SIGTERM they ignore both.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stops = (signal.SIGQUIT, signal.SIGTERM)
    for stop in stops:
        original = signal.getsignal(stop)
        if not callable(original):
            continue

        def once(signum: int, frame: object, original: Any = original) -> None:
            for other in stops:
                signal.signal(other, signal.SIG_IGN)
            if signum == signal.SIGQUIT and hasattr(worker, "tpool"):
                # Quick stop of a gthread worker: its own handler shuts the thread pool down from the signal
                # handler, which deadlocks when the signal lands while the main thread holds the pool's lock in
                # submit() (a connection closing as nginx stops): the worker then hung until SIGKILL. A quick
                # stop drops requests in flight by definition, so leave at once, as the master asked (no log
                # line: the logging lock may be held by the interrupted thread too).
                os._exit(0)
            original(signum, frame)

        signal.signal(stop, once)


def run_server(settings: Settings, *, host: str, port: int, workers: int = 2, threads: int = 1,
               timeout: int | None = None, max_requests: int = 0, front: str | None = None,
               app_factory: str | None = None) -> int:
    """Serve ``create_app(settings)`` with gunicorn behind the nginx front (see :mod:`cds_service.serve`)
    until stopped. ``front`` overrides ``NMS_CDS_FRONT``; ``app_factory`` ("module:callable", called with
    the settings) replaces ``create_app`` (benchmark floor, tests)."""
    import importlib
    import shutil
    import tempfile
    from pathlib import Path

    from gunicorn.app.base import BaseApplication

    from cds_service import logs, metrics

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
    nginx = front_.nginx_binary() if front == "nginx" else None
    if front == "nginx" and nginx is None:
        if not settings.is_development:
            print("nms-cds: NMS_CDS_FRONT=nginx but no nginx binary was found (install the Debian package "
                  "nginx-light or nginx), or NMS_CDS_FRONT=none behind your own buffering proxy", file=sys.stderr)
            return 2
        log.warning("nginx not found: development server without the buffering front",
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
        state["funnel"] = output.OutputFunnel()
        logs.configure_process()
        json_gunicorn_errors()
        # before the workers fork (they import prometheus_client on first use, in multiprocess mode)
        multiproc = Path(os.environ.get(metrics.MULTIPROC_ENV) or runtime / "prometheus")
        clean_multiproc_dir(multiproc)
        os.environ[metrics.MULTIPROC_ENV] = str(multiproc)
        if nginx is None:
            log.info(f"serving on {bind} without a front (NMS_CDS_FRONT=none): slow clients hold workers",
                             extra={"event": "serving", "front": "none", "bind": bind, "workers": workers,
                                    "threads": threads})
            return
        conf = runtime / "nginx.conf"
        conf.write_text(front_.nginx_conf(settings, host=host, port=port, upstream=upstream, runtime=runtime))
        proxy = front_.Front(nginx, conf, host=host, port=port)
        state["front"] = proxy
        try:
            proxy.start()
        except RuntimeError as exc:
            log.error(str(exc), extra={"event": "front-failed"})
            state["failed"] = True
            os.kill(master, signal.SIGTERM)
            return

        def front_died(returncode: int | None) -> None:
            if returncode == 0:  # stopped by a signal to the process group (Ctrl-C, killpg): a normal stop
                log.info("nginx front stopped; stopping", extra={"event": "front-stopped"})
                # The same group signal reached the master too. Let the master act on it first: if this SIGTERM
                # overtook a Ctrl-C's SIGINT, the master would stop gracefully and a gthread worker holding a
                # connection waited for the 10 s graceful timeout and its SIGKILL. A master already stopping
                # only queues this SIGTERM; one that never got the signal (nginx stopped alone) still stops.
                time.sleep(FRONT_STOP_GRACE_SECONDS)
            else:
                log.error(f"nginx front exited with {returncode}; stopping", extra={"event": "front-failed"})
                state["failed"] = True
            os.kill(master, signal.SIGTERM)

        proxy.watch(front_died)
        log.info(
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
            self.cfg.set("logger_class", output.gunicorn_logger_class())
            self.cfg.set("max_requests", max_requests)
            self.cfg.set("max_requests_jitter", max_requests // 10)
            self.cfg.set("post_worker_init", _ignore_terminal_sigint)
            self.cfg.set("when_ready", when_ready)
            self.cfg.set("child_exit", child_exit)
            if "control_socket_disable" in self.cfg.settings:  # gunicorn >= 25.1 writes ~/.gunicorn otherwise
                self.cfg.set("control_socket_disable", True)

        def load(self) -> object:
            app = factory(settings)
            return frontauth.wrap(app) if nginx else app  # the front's header-only pass (serve/frontauth.py)

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
            if isinstance(proxy, front_.Front):
                proxy.stop()
            funnel = state["funnel"]
            if isinstance(funnel, output.OutputFunnel):
                funnel.close()
            shutil.rmtree(runtime, ignore_errors=True)
    if state["failed"]:
        return 1
    return code if isinstance(code, int) else (0 if code is None else 1)


def _store_ready(settings: Settings) -> bool:
    """Open the store once before any worker starts: migrations run here, the patient-hash key is found (or
    moved out of the database), Redis's eviction policy is checked; a store that cannot be used is one clear
    line (the cause, never a path or URL) instead of a traceback per gunicorn worker."""
    from cds_service.errors import ConfigError, StoreUnavailable
    from cds_service.store import open_store
    from cds_service.store.keys import audit_key

    try:
        store = open_store(settings)
        try:
            audit_key(settings, store)
        finally:
            store.close()
        if settings.redis_url is not None:
            from cds_service.store.redis_replay import RedisReplayGuard

            guard = RedisReplayGuard(settings.redis_url.get_secret_value(), timeout=settings.store_timeout_seconds)
            try:
                problem = guard.eviction_problem(checked=settings.redis_eviction_checked)
            finally:
                guard.close()
            if problem:
                print(f"nms-cds: refusing to start: {problem}", file=sys.stderr)
                return False
    except StoreUnavailable as exc:
        print(f"nms-cds: store unavailable: {exc.cause}", file=sys.stderr)
        return False
    except ConfigError as exc:
        print(f"nms-cds: refusing to start: {exc}", file=sys.stderr)
        return False
    return True


def json_gunicorn_errors() -> None:
    """Make gunicorn's own error answers (a worker killed mid-request, a malformed request when there is no
    front) the service's OperationOutcome instead of its HTML page. Called in the master before the fork."""
    from gunicorn import util

    def write_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
        message = "internal error; see the service log" if status_int >= 500 else "malformed HTTP request"
        body = json.dumps(operation_outcome(status_int, message)).encode()
        head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
        util.write_nonblock(sock, head + body)

    util.write_error = write_error


def clean_multiproc_dir(path: Path) -> None:
    """Empty (or create) the prometheus multiprocess directory: stale files would add old counts."""
    path.mkdir(parents=True, exist_ok=True)
    for item in path.glob("*.db"):
        with contextlib.suppress(FileNotFoundError):
            item.unlink()
