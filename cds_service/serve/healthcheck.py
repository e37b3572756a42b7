"""``nms-cds healthcheck``: does the local service answer ``/healthz``? (the container's HEALTHCHECK)

Without ``--port`` the port is read from the command line of the ``nms-cds serve`` process (``--pid``, default 1
in a container), so that ``docker run IMAGE --port 9090`` is checked on 9090; else ``NMS_CDS_PORT``, else 8080.
"""

from __future__ import annotations

import argparse
import urllib.error
import urllib.request
from pathlib import Path

from cds_service.serve.preflight import env_port

TIMEOUT_SECONDS = 2.0


def serve_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--host`` and ``--port`` of ``nms-cds serve`` (also how a serving process's command line is read)."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="default: NMS_CDS_PORT, else 8080")
    return parser


def serving_address(pid: int) -> tuple[str, int] | None:
    """(host, port) of an ``nms-cds serve`` process from its command line (Linux /proc); None when not one."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace").split("\0")
    except OSError:
        return None
    if "serve" not in argv or not any(Path(a).name == "nms-cds" or a.endswith("cds_service.cli") for a in argv):
        return None
    known, _ = serve_options(argparse.ArgumentParser(add_help=False)).parse_known_args(
        argv[argv.index("serve") + 1:])
    host = "127.0.0.1" if known.host in ("0.0.0.0", "", "::") else known.host
    return host, known.port if known.port is not None else env_port()


def healthz_url(host: str | None, port: int | None, pid: int) -> str:
    """The URL to check: ``host``/``port`` as given, else those of the serving process ``pid``."""
    if port is not None:
        host = host or "127.0.0.1"
    else:
        found_host, port = serving_address(pid) or ("127.0.0.1", env_port())
        host = host or found_host
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/healthz"


def problem(url: str) -> str | None:
    """None when ``url`` answers 200 within the timeout, else what went wrong (one line, naming the URL)."""
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy from the environment
        with opener.open(url, timeout=TIMEOUT_SECONDS) as answer:
            status = answer.status
    except (urllib.error.URLError, OSError) as exc:
        return f"{url}: {getattr(exc, 'reason', exc)}"
    return None if status == 200 else f"{url} answered {status}"
