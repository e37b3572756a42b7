"""``nms-cds`` command line: serve the service, and tools that play the EHR for developers.

Progress and errors go to stderr, results to stdout; exit codes: 0 ok, 1 failure, 2 usage or configuration
error (a bad argument, a missing file or folder, an invalid ``NMS_CDS_*`` value, a port already in use).
Every error is one line; a configuration error names the variable, the value's problem and the accepted form.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cds_service import __version__, report
from cds_service.config import AuthMode, Settings, describe, load_settings, unknown_variables
from cds_service.errors import ConfigError, UsageError
from cds_service.fhir.client import is_loopback

DEFAULT_PORT = 8080
HEALTHCHECK_TIMEOUT_SECONDS = 2.0


def _say(message: str) -> None:
    print(f"nms-cds: {message}", file=sys.stderr)


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


def ensure_port_free(host: str, port: int, what: str, option: str) -> None:
    """:class:`UsageError` naming the port, its user and the option to change it when ``host:port`` is taken."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn and node bind
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(f"port {port} on {host} ({what}) is already in use; "
                                 f"stop what uses it or choose another with {option}") from None
            if exc.errno == errno.EACCES:
                raise UsageError(f"port {port} on {host} ({what}) needs privileges; "
                                 f"choose one above 1023 with {option}") from None
            raise UsageError(f"cannot listen on {host}:{port} ({what}): {exc.strerror}") from None


def ensure_temp_dir() -> None:
    """gunicorn and Python need a writable temporary directory: :class:`UsageError` with the fix when none is."""
    try:
        tempfile.gettempdir()
    except FileNotFoundError:
        raise UsageError("no writable temporary directory (tried $TMPDIR, /tmp, /var/tmp, /usr/tmp and the working "
                         "directory); on a read-only root file system mount one: docker run --read-only "
                         "--tmpfs /tmp ...") from None


def env_port() -> int:
    """``NMS_CDS_PORT`` (default 8080): the default port of ``serve`` and ``healthcheck``."""
    raw = os.environ.get("NMS_CDS_PORT", "").strip()
    if not raw:
        return DEFAULT_PORT
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError(f"NMS_CDS_PORT={raw!r}: not a port; accepted: a whole number from 1 to 65535")
    return int(raw)


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
                # The same group signal reached the master too. Let the master act on it first: if this SIGTERM
                # overtook a Ctrl-C's SIGINT, the master would stop gracefully and a gthread worker holding a
                # connection waited for the 10 s graceful timeout and its SIGKILL. A master already stopping
                # only queues this SIGTERM; one that never got the signal (nginx stopped alone) still stops.
                time.sleep(FRONT_STOP_GRACE_SECONDS)
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
            self.cfg.set("post_worker_init", _ignore_terminal_sigint)
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
    for note in unknown_variables():
        _say(f"warning: {note}")
    settings = load_settings()
    port = args.port if args.port is not None else env_port()
    ensure_temp_dir()
    ensure_port_free(args.host, port, "the CDS service", "--port or NMS_CDS_PORT")
    return run_server(settings, host=args.host, port=port, workers=args.workers, threads=args.threads,
                      timeout=args.timeout, max_requests=args.max_requests, front=args.front,
                      app_factory=args.app)


def config_report() -> dict[str, Any]:
    """The environment's effective configuration (secrets redacted), its problems and warnings.

    ``settings``: one row per setting (``variable``, ``value``, ``source`` environment or default, ``valid``);
    an invalid value is shown as the default that would replace it, marked invalid.
    """
    problems: list[str] = []
    warnings = unknown_variables()
    settings: Settings | None = None
    try:
        settings = load_settings()
    except ConfigError as exc:
        problems.extend(exc.problems)
    failing = {line.split("=", 1)[0] for line in problems if line.startswith("NMS_CDS_")}  # "NMS_CDS_X='v': ..."
    if settings is None:  # show the rest: the failing settings at their defaults
        defaults = {name: info.get_default(call_default_factory=True) for name, info in Settings.model_fields.items()
                    if f"NMS_CDS_{name.upper()}" in failing}
        try:
            settings = Settings(**defaults)
        except Exception:  # a check across settings still fails: only the problems can be shown
            settings = None
    rows: list[dict[str, Any]] = []
    trusted: int | None = None
    if settings is not None:
        rows = [{"variable": name, "value": value, "source": source, "valid": name not in failing}
                for name, value, source in describe(settings)]
        if not problems:
            warnings.extend(settings.warnings())
            if settings.auth == AuthMode.OFF:
                warnings.append("NMS_CDS_AUTH=off: every route is open (loopback development only)")
            else:
                from cds_service.auth import load_trusted_clients

                try:
                    trusted = len(load_trusted_clients(settings.trusted_clients))
                except ConfigError as exc:
                    problems.extend(exc.problems)
    return {"settings": rows, "trusted_clients": trusted, "problems": problems, "warnings": warnings}


def _check_config(args: argparse.Namespace) -> int:
    report = config_report()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("effective configuration (secrets redacted):")
        for row in report["settings"]:
            value = row["value"] or "(unset)"
            shown = value if row["valid"] else f"INVALID, the default would be: {value}"
            print(f"  {row['variable']:45} {shown}  [{row['source']}]")
        if report["trusted_clients"] is not None:
            print(f"  {'(trusted clients loaded)':45} {report['trusted_clients']}")
        for title in ("problems", "warnings"):
            print(f"{title}: {len(report[title])}")
            for line in report[title]:
                print(f"  {line}")
    return 2 if report["problems"] else 0


def _proc_serve_port(pid: int) -> tuple[str, int] | None:
    """(host, port) of an ``nms-cds serve`` process from its command line (Linux /proc); None when not one."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace").split("\0")
    except OSError:
        return None
    if "serve" not in argv or not any(Path(a).name == "nms-cds" or a.endswith("cds_service.cli") for a in argv):
        return None
    known, _ = _serve_options(argparse.ArgumentParser(add_help=False)).parse_known_args(
        argv[argv.index("serve") + 1:])
    host = "127.0.0.1" if known.host in ("0.0.0.0", "", "::") else known.host
    return host, known.port if known.port is not None else env_port()


def _healthcheck(args: argparse.Namespace) -> int:
    if args.port is not None:
        host, port = args.host or "127.0.0.1", args.port
    else:
        host, port = _proc_serve_port(args.pid) or ("127.0.0.1", env_port())
        host = args.host or host
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/healthz"
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy from the environment
        with opener.open(url, timeout=HEALTHCHECK_TIMEOUT_SECONDS) as answer:
            ok = answer.status == 200
    except (urllib.error.URLError, OSError) as exc:
        _say(f"unhealthy: {url}: {getattr(exc, 'reason', exc)}")
        return 1
    if not ok:
        _say(f"unhealthy: {url} answered {answer.status}")
        return 1
    print(f"healthy: {url}")
    return 0


def _serve_options(serve: argparse.ArgumentParser) -> argparse.ArgumentParser:
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=None, help="default: NMS_CDS_PORT, else 8080")
    return serve


def build_parser(*, dev: bool = True) -> argparse.ArgumentParser:
    """The command parser; ``dev`` adds the developer commands (imports :mod:`cds_service.devtools`)."""
    parser = argparse.ArgumentParser(prog="nms-cds", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"nms-cds {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = _serve_options(sub.add_parser("serve", help="serve the CDS Hooks service with gunicorn"))
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
    check = sub.add_parser("check-config", help="print the effective configuration and its problems (exit 0 or 2)")
    check.add_argument("--json", action="store_true", help="one JSON object instead of text")
    check.set_defaults(func=_check_config)
    health = sub.add_parser("healthcheck", help="exit 0 when the local service answers /healthz (container check)")
    health.add_argument("--host", default=None, help="default: the serving process's --host, else 127.0.0.1")
    health.add_argument("--port", type=int, default=None,
                        help="default: the --port of the `nms-cds serve` process --pid, else NMS_CDS_PORT, else 8080")
    health.add_argument("--pid", type=int, default=1, help="process whose command line gives the port (default 1)")
    health.set_defaults(func=_healthcheck)
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
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        for line in exc.problems:
            _say(line)
        return 2
    except UsageError as exc:
        _say(str(exc))
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside the server (which handles it itself): no traceback
        return 130
    return result


def entry() -> None:
    """The ``nms-cds`` console script."""
    argv = sys.argv[1:]
    try:
        code = main(argv)
    except SystemExit as exc:  # gunicorn's master and workers leave through sys.exit
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    if argv[:1] in (["serve"], ["dev"]):
        # The server has stopped and cleaned up after itself (gunicorn's workers, forked inside, end here too):
        # skip the interpreter's teardown of the imported app (about a second of freeing modules under load),
        # so that Ctrl-C gives the prompt back at once.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
