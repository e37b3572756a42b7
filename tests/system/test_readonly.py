"""``nms-cds serve`` on a read-only root file system, as in ``docker run --read-only`` (issue 15), without Docker.

A private mount namespace (``unshare --mount``, root only) remounts ``/`` read-only for the server alone,
with the image's environment (``HOME=/tmp``, no ``TMPDIR``, working directory ``/``). Without a writable
temporary directory the server refuses with one line and exit 2; with a tmpfs on ``/tmp`` (``--tmpfs /tmp``)
it serves and answers ``nms-cds healthcheck``. A checkout (or virtual environment) that lies under ``/tmp`` is
bound back, read-only, at its own path on top of the fresh tmpfs, so the suite passes from any folder.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port
from tests.system.test_cli import run, wait_healthy

NMS_CDS = str(Path(sys.executable).with_name("nms-cds"))
VENV = Path(sys.prefix).resolve()


def namespaces_work() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            "mount -o remount,bind,ro / && ! touch /tmp/.nms-cds-ro-probe 2>/dev/null"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not namespaces_work(), reason="needs root and unshare --mount (a private mount "
                                                               "namespace) to make / read-only for one process")


def _under_tmp() -> list[Path]:
    """The checkout and the virtual environment, where they lie under /tmp (the tmpfs would hide them)."""
    tmp = Path("/tmp").resolve()
    return sorted({p for p in (REPO, VENV) if p.is_relative_to(tmp) and p != tmp})


def _mounts(tmpfs: bool) -> str:
    if not tmpfs:
        return "mount -o remount,bind,ro / && "
    keep = _under_tmp()
    if not keep:
        return "mount -o remount,bind,ro / && mount -t tmpfs tmpfs /tmp && "
    # the old /tmp stays reachable at /mnt (a mount point of the private namespace only) until the checkout and
    # the environment are bound back at their own paths, read-only, on the new tmpfs
    steps = ["mount --bind /tmp /mnt", "mount -o remount,bind,ro /", "mount -t tmpfs tmpfs /tmp"]
    for path in keep:
        inner, target = shlex.quote("/mnt/" + str(path.relative_to(Path("/tmp").resolve()))), shlex.quote(str(path))
        steps += [f"mkdir -p {target}", f"mount --bind {inner} {target}", f"mount -o remount,bind,ro {target}"]
    steps.append("umount -l /mnt")
    return " && ".join(steps) + " && "


def read_only(command: list[str], *, tmpfs: bool) -> subprocess.Popen[str]:
    mounts = _mounts(tmpfs)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NMS_CDS_", "TMPDIR", "TEMP", "TMP"))}
    # as the image: HOME on the tmpfs, the store's directory writable (the image's volume; here on the tmpfs)
    env.update({"HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1", "NMS_CDS_AUTH": "off", "NMS_CDS_DATA_DIR": "/tmp/data"})
    script = mounts + "cd / && exec " + " ".join(command)
    return subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_without_a_writable_tmp_serve_refuses_with_one_line() -> None:
    proc = read_only([NMS_CDS, "serve", "--port", str(free_port())], tmpfs=False)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out) == (2, "")
    assert err.splitlines() == [
        "nms-cds: no writable temporary directory (tried $TMPDIR, /tmp, /var/tmp, /usr/tmp and the working "
        "directory); on a read-only root file system mount one: docker run --read-only --tmpfs /tmp ..."]


def test_with_a_tmpfs_on_tmp_serve_is_healthy() -> None:
    if _under_tmp() and not Path("/mnt").is_dir():
        pytest.skip("the checkout lies under /tmp and there is no /mnt to keep it reachable under the fresh tmpfs")
    port = free_port()
    proc = read_only([NMS_CDS, "serve", "--port", str(port), "--workers", "2"], tmpfs=True)
    try:
        try:
            wait_healthy(proc, port)
        except BaseException:
            proc.wait(timeout=60)
            print(proc.stderr.read() if proc.stderr else "")
            raise
        check = run(["healthcheck", "--pid", str(proc.pid)])
        assert check.returncode == 0, check.stderr
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err and "Read-only file system" not in err and "Permission denied" not in err, err
