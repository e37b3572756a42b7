"""``nms-cds`` command line: serve the service, and tools that play the EHR for developers.

Progress and errors go to stderr, results to stdout; exit codes: 0 ok, 1 failure, 2 usage or configuration
error (a bad argument, a missing file or folder, an invalid ``NMS_CDS_*`` value, a port already in use).
Every error is one line; a configuration error names the variable, the value's problem and the accepted form.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from cds_service import __version__, config_report, report
from cds_service.config_report import load_settings, unknown_variables
from cds_service.errors import ConfigError, UsageError
from cds_service.serve import healthcheck
from cds_service.serve.gunicorn import run_server
from cds_service.serve.preflight import ensure_port_free, ensure_temp_dir, env_port
from cds_service.watch import command as watch_command

# Argument parsing and dispatch only (this docstring is the --help text): serving is cds_service.serve,
# check-config cds_service.config_report, the developer commands cds_service.devtools.tools, which only this
# module may import, and only when the command is not `serve` (pyproject.toml [tool.importlinter]).


def _say(message: str) -> None:
    print(f"nms-cds: {message}", file=sys.stderr)


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


def _check_config(args: argparse.Namespace) -> int:
    report = config_report.collect()
    print(json.dumps(report, indent=2) if args.json else "\n".join(config_report.table(report)))
    return 2 if report["problems"] else 0


def _export_knowledge(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cds_service.knowledge import load_knowledge
    from cds_service.knowledge.export import write

    site = Path(args.site_file) if args.site_file else load_settings().site_file
    if site is not None and not site.is_file():
        raise UsageError(f"--site-file {site}: no such file")
    knowledge = load_knowledge(site)
    folder = Path(args.dir)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder}: exists and is not a folder")
    paths = write(knowledge, folder)
    print(f"{len(paths)} FHIR resources (knowledge {knowledge.version}) written to {folder}")
    return 0


def _healthcheck(args: argparse.Namespace) -> int:
    url = healthcheck.healthz_url(args.host, args.port, args.pid)
    trouble = healthcheck.problem(url)
    if trouble is not None:
        _say(f"unhealthy: {trouble}")
        return 1
    print(f"healthy: {url}")
    return 0


def build_parser(*, dev: bool = True) -> argparse.ArgumentParser:
    """The command parser; ``dev`` adds the developer commands (imports :mod:`cds_service.devtools`)."""
    parser = argparse.ArgumentParser(prog="nms-cds", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"nms-cds {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = healthcheck.serve_options(sub.add_parser("serve", help="serve the CDS Hooks service with gunicorn"))
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
    export = sub.add_parser("export-knowledge", help="write the rules' value sets (after the site file) as FHIR R4 "
                            "ValueSets and a Library of their data requirements into DIR")
    export.add_argument("dir", metavar="DIR", help="folder to write <type>-<id>.json into (created)")
    export.add_argument("--site-file", default=None, help="site knowledge file (default: NMS_CDS_SITE_FILE)")
    export.set_defaults(func=_export_knowledge)
    health = sub.add_parser("healthcheck", help="exit 0 when the local service answers /healthz (container check)")
    health.add_argument("--host", default=None, help="default: the serving process's --host, else 127.0.0.1")
    health.add_argument("--port", type=int, default=None,
                        help="default: the --port of the `nms-cds serve` process --pid, else NMS_CDS_PORT, else 8080")
    health.add_argument("--pid", type=int, default=1, help="process whose command line gives the port (default 1)")
    health.set_defaults(func=_healthcheck)
    if dev:  # imported here, not above: `nms-cds serve` never loads the developer tooling
        from cds_service.devtools import tools

        tools.register(sub)
    report.register(sub)
    watch_command.register(sub)
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
