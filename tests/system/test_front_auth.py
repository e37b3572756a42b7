"""The nginx front authenticates before it buffers: unauthenticated uploads never reach the disk, authenticated
ones spool within the documented bound (docs/security.md "Request bodies and the front").

Real ``nms-cds serve`` (gunicorn + nginx) in JWT mode. The attack test holds hundreds of slow unauthenticated
uploads (a 32 MiB Content-Length, one byte every two seconds, reopened as soon as the front closes them) from
three loopback addresses while a trusted client calls the service, and samples the front's spool directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import selectors
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.helpers.jwt_helpers import SigningKey, ec_key, jwks, make_token, write_trusted_clients
from tests.system.test_serving import HOOK_PATH, LEGIT_ADDRESS, Served, _FromAddress, _require_nginx, hook_request
from tests.system.test_serving import serve as serve_front

ISS = "https://ehr.example.org"
ATTACK_ADDRESSES = ("127.0.0.1", "127.0.0.3", "127.0.0.4")
WANTED_CONNECTIONS = 300
MAX_BODY = 32 * 1024 * 1024


def spool_bytes(tmp: Path, where: tuple[str, ...] = ("/client_body/", "/spool/")) -> int:
    """Bytes nginx holds in body spool files under ``tmp`` (the server's TMPDIR: nms-cds-serve-*/client_body).

    nginx unlinks a spool file as soon as it creates it and keeps only the descriptor: the files are counted
    through the nginx workers' /proc/PID/fd links (same user, or root), plus any still named in the directory.
    """
    marker = f"{tmp}/"
    total = 0
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or not (proc / "cmdline").read_bytes().startswith(b"nginx: worker"):
                continue
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith(marker) and any(part in target for part in where):
                    total += fd.stat().st_size
        except OSError:  # gone meanwhile, or not ours to read
            continue
    for spool in [*tmp.glob("nms-cds-serve-*/client_body"), tmp / "spool"]:
        for path in spool.rglob("*"):
            with contextlib.suppress(OSError):
                total += path.stat().st_size if path.is_file() else 0
    return total


def nginx_rss_bytes(tmp: Path) -> int:
    """Resident memory of the nginx workers of the front whose runtime directory is under ``tmp`` (their master's
    command line names it)."""
    procs = [p for p in Path("/proc").iterdir() if p.name.isdigit()]
    masters, total = set(), 0
    for proc in procs:
        with contextlib.suppress(OSError):
            line = (proc / "cmdline").read_bytes()
            if line.startswith(b"nginx: master") and f"{tmp}/".encode() in line:
                masters.add(proc.name)
    for proc in procs:
        with contextlib.suppress(OSError, IndexError, ValueError):
            status = (proc / "status").read_text()
            if status.split("PPid:")[1].split()[0] in masters:
                total += int(status.split("VmRSS:")[1].split()[0]) * 1024
    return total


@contextmanager
def jwt_front(tmp: Path, key: SigningKey, **env: str) -> Iterator[tuple[Served, Path]]:
    clients = write_trusted_clients(tmp / "clients.json", [{"iss": ISS, "jwks": jwks(key)}])
    # short, so the Unix socket path under it fits (108 bytes); removed below
    spool_root = Path(tempfile.mkdtemp(prefix="nsp-", dir="/tmp"))
    spool_root.chmod(0o711)  # as root, nginx's workers (nobody) traverse it to the socket
    full_env = {"NMS_CDS_AUTH": "jwt", "NMS_CDS_TRUSTED_CLIENTS": str(clients), "TMPDIR": str(spool_root),
                "NMS_CDS_DATA_DIR": str(tmp / "data"),
                **{name: value.format(tmp=spool_root) for name, value in env.items()}}
    try:
        with serve_front(tmp, "--workers", "2", env=full_env, ready_workers=2) as served:
            yield served, spool_root
    finally:
        shutil.rmtree(spool_root, ignore_errors=True)


def token(key: SigningKey, served: Served, path: str = HOOK_PATH) -> str:
    return make_token(key, iss=ISS, aud=served.base + path, now=time.time())


def connection_budget(wanted: int) -> int:
    """Slow connections this process may open: raise the soft open-file limit to the hard one where allowed
    (the suite runs under ``ulimit -n 1024``, several workers in parallel), keeping 300 descriptors spare."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 4096)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(target, 4096), hard))
            soft = min(target, 4096)
        except (ValueError, OSError):
            pass
    return max(50, min(wanted, soft - 300, 400))  # the suite's leak check fails a test above 512 descriptors


@dataclass
class Attack:
    connections: int
    forged: str
    opened: int = 0
    answers: dict[int, int] = field(default_factory=dict)
    lifetimes: list[float] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    peak_open: int = 0


def slow_uploads(port: int, attack: Attack, stop: threading.Event) -> None:
    """Hold ``attack.connections`` uploads (Content-Length 32 MiB, then one byte every 2 s), half without a token
    and half with a forged one, spread over ATTACK_ADDRESSES; reopen each as soon as the front closes it."""
    sel = selectors.DefaultSelector()
    state: dict[socket.socket, dict[str, Any]] = {}

    def open_one(i: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((ATTACK_ADDRESSES[i % len(ATTACK_ADDRESSES)], 0))
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        auth = f"Authorization: Bearer {attack.forged}\r\n" if i % 2 else ""
        head = (f"POST {HOOK_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}"
                f"Content-Length: {MAX_BODY}\r\n\r\n{{").encode()
        state[sock] = {"i": i, "opened": time.monotonic(), "next": time.monotonic() + 0.05, "head": head,
                       "sent": False, "answer": b""}
        sel.register(sock, selectors.EVENT_READ)
        attack.opened += 1

    for i in range(attack.connections):
        open_one(i)
    while not stop.is_set():
        for key, _ in sel.select(timeout=0.05):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            info = state[sock]
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if data:
                info["answer"] += data
                continue
            state.pop(sock)
            sel.unregister(sock)
            sock.close()
            attack.lifetimes.append(time.monotonic() - info["opened"])
            head = info["answer"].partition(b"\r\n\r\n")[0]
            status = int(head.split(b" ")[1]) if head.startswith(b"HTTP/1.1 ") else 0
            attack.answers[status] = attack.answers.get(status, 0) + 1
            if status and len(attack.bodies) < 20:  # a sample of answers (a connection closed unanswered has none)
                attack.bodies.append(info["answer"])
            open_one(info["i"])
        now = time.monotonic()
        attack.peak_open = max(attack.peak_open, len(state))
        for sock, info in list(state.items()):
            if now < info["next"]:
                continue
            info["next"] = now + 2.0
            try:
                sock.send(b"[" if info["sent"] else info["head"])
                info["sent"] = True
            except (BlockingIOError, InterruptedError, OSError):
                pass  # not connected yet, or reset: the read side sees the close
    for sock in state:
        sock.close()
    sel.close()


def test_slow_unauthenticated_uploads_never_reach_the_disk(tmp_path: Path) -> None:
    _require_nginx()
    key = ec_key()
    forged = make_token(ec_key("ec-384", "P-384"), iss=ISS, aud="http://x", now=time.time())  # other key, same kid
    with jwt_front(tmp_path, key) as (served, spool_root):
        attack = Attack(connections_wanted := connection_budget(WANTED_CONNECTIONS), forged)
        assert connections_wanted >= 50
        stop = threading.Event()
        attacker = threading.Thread(target=slow_uploads, args=(served.port, attack, stop), daemon=True)
        peak_spool = [0]
        rss_before = nginx_rss_bytes(spool_root)
        peak_rss = [rss_before]

        def sample() -> None:
            while not stop.is_set():
                peak_spool[0] = max(peak_spool[0], spool_bytes(spool_root))
                peak_rss[0] = max(peak_rss[0], nginx_rss_bytes(spool_root))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        attacker.start()
        sampler.start()
        time.sleep(2.0)
        body = hook_request()
        calls = ok = 0
        failures: list[str] = []
        with requests.Session() as session:
            session.mount("http://", _FromAddress(LEGIT_ADDRESS))
            end = time.monotonic() + 12
            while time.monotonic() < end:
                path = HOOK_PATH if calls % 3 else "/cds-services"
                headers = {"Authorization": f"Bearer {token(key, served, path)}",
                           "Content-Type": "application/json"}
                try:
                    if path == HOOK_PATH:
                        response = session.post(served.base + path, data=body, headers=headers, timeout=5)
                    else:
                        response = session.get(served.base + path, headers=headers, timeout=5)
                    ok += response.status_code == 200
                    if response.status_code != 200:
                        failures.append(f"{path}: {response.status_code} {response.text[:200]}")
                except requests.RequestException as exc:
                    failures.append(f"{path}: {type(exc).__name__}")
                calls += 1
        stop.set()
        attacker.join(timeout=10)
        sampler.join(timeout=5)
    print(json.dumps({"slow_unauthenticated_connections": connections_wanted, "peak_open": attack.peak_open,
                      "uploads_opened": attack.opened, "answers": attack.answers,
                      "max_held_s": round(max(attack.lifetimes), 2), "trusted_calls": calls, "trusted_ok": ok,
                      "spool_peak_bytes": peak_spool[0], "nginx_rss_before_kib": rss_before // 1024,
                      "nginx_rss_peak_kib": peak_rss[0] // 1024}))
    assert calls >= 20 and ok == calls, failures[:5]
    # memory: at most ~100 KiB per unauthenticated request in the front (docs/security.md), far less in practice
    assert rss_before > 0 and peak_rss[0] - rss_before <= connections_wanted * 100 * 1024
    assert attack.peak_open >= connections_wanted * 0.9  # the attack held its connections open throughout
    assert attack.opened >= 2 * connections_wanted  # ... each closed and reopened at least once
    assert set(attack.answers) <= {401, 0}, attack.answers  # 0: closed before an answer was read
    assert attack.answers.get(401, 0) >= connections_wanted
    answered = [b for b in attack.bodies if b.startswith(b"HTTP/1.1 401")]
    head, _, payload = answered[0].partition(b"\r\n\r\n")
    assert b"Content-Type: application/json" in head and b'WWW-Authenticate: Bearer realm="cds-services"' in head
    assert json.loads(payload)["issue"][0]["code"] == "security"  # as the service's own 401
    assert max(attack.lifetimes) < 4.0, max(attack.lifetimes)  # the front lets go within lingering_time + slack
    # the trusted client's bodies are below the 64 KiB in-memory buffer: the spool must stay empty
    assert len(body) < 64 * 1024 and peak_spool[0] == 0, peak_spool[0]
    refusals = [json.loads(line) for line in served.lines if "unauthorized (before the body)" in line]
    assert refusals and {r["reason"] for r in refusals} <= {"missing Authorization header", "bad signature"}


def test_authenticated_uploads_spool_within_the_quota(tmp_path: Path) -> None:
    """At most NMS_CDS_FRONT_MAX_UPLOADS bodies at once, each at most NMS_CDS_MAX_BODY_BYTES: the next upload
    answers 429 at once; the spool never exceeds uploads × body size; an unauthenticated upload still gets 401."""
    _require_nginx()
    key = ec_key()
    limit = 1024 * 1024
    with jwt_front(tmp_path, key, NMS_CDS_FRONT_MAX_UPLOADS="2", NMS_CDS_MAX_BODY_BYTES=str(limit),
                   NMS_CDS_FRONT_SPOOL_DIR="{tmp}/spool") as (served, spool_root):
        held = []
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", served.port), timeout=5)
            sock.sendall((f"POST {HOOK_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          f"Authorization: Bearer {token(key, served)}\r\nContent-Length: {limit}\r\n\r\n"
                          ).encode() + b" " * (600 * 1024))
            held.append(sock)
        deadline = time.monotonic() + 5
        in_setting = (f"{spool_root}/spool/",)  # NMS_CDS_FRONT_SPOOL_DIR, not the default directory
        while spool_bytes(spool_root, in_setting) < 2 * (600 - 64) * 1024 and time.monotonic() < deadline:
            time.sleep(0.05)
        spooled = spool_bytes(spool_root, in_setting)
        third = requests.post(served.base + HOOK_PATH, data=hook_request(), timeout=5,
                              headers={"Authorization": f"Bearer {token(key, served)}",
                                       "Content-Type": "application/json"})
        unauthenticated = requests.post(served.base + HOOK_PATH, data=b"x" * 100_000, timeout=5)
        for sock in held:
            sock.close()
        time.sleep(0.3)
        after = requests.post(served.base + HOOK_PATH, data=hook_request(), timeout=5,
                              headers={"Authorization": f"Bearer {token(key, served)}",
                                       "Content-Type": "application/json"})
        left = spool_bytes(spool_root)
    assert 2 * (600 - 64) * 1024 <= spooled <= 2 * limit, spooled
    assert third.status_code == 429 and third.json()["issue"][0]["code"] == "throttled"
    assert third.headers["Retry-After"] == "5"
    assert unauthenticated.status_code == 401
    assert after.status_code == 200 and left == 0
