"""Checks before ``nms-cds serve`` (and ``dev``) bind: the port, a temporary directory, ``NMS_CDS_PORT``.

Each failure is one :class:`UsageError` or :class:`ConfigError` line naming the fix.
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile

from cds_service.errors import ConfigError, UsageError

DEFAULT_PORT = 8080


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


