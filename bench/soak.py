"""``make soak``: sustained mixed load on the service under production gunicorn settings, loopback only.

Starts, on free 127.0.0.1 ports,

- the local Node FHIR server (``fhir_server/``) with every fixture scenario;
- the service exactly as the Docker image runs it: ``nms-cds serve --workers 2`` (``serve.gunicorn.run_server``: sync
  workers, timeout 30 s, keep-alive 5 s), ``NMS_CDS_ENVIRONMENT=production``, **JWT authentication on**
  (a throw-away EC P-384 client key in a temporary trusted-clients file; every request carries a fresh
  token, so the replay cache works as in production), the local FHIR server in the allowlist, and
  ``NMS_CDS_FIXED_NOW`` = the fixtures' anchor so that every answer can be checked;

then drives a paced, open-loop mix (a request is due every 1/rate seconds whatever the previous ones did):

- 70 %: fixture order-sign requests with prefetch (six scenarios: critical, warning and no-card answers);
- 20 %: the classic-nms request with no prefetch and ``fhirServer`` = the local FHIR server;
- 5 %: feedback on a card; 5 %: discovery.

The rate is half the saturation rate: scenario 1's best rate in ``bench/results/latest.json`` (``make
bench``) when present, else a 10-second ``wrk`` saturation run of this mix (pre-signed unique tokens)
measured here. An error is a non-200 answer, a transport error, an answer whose card indicator is not the
scenario's, an ``error`` line in the service log, or a gunicorn worker that was replaced. Memory is the RSS
of each worker at the end of the warm-up and at the end; growth ≥ 10 % fails the run.

    .venv/bin/python bench/soak.py --minutes 10

Writes ``bench/results/soak.json``; exit status 0 when there were no errors and no worker grew ≥ 10 %.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.run_bench import child_pids, free_port  # noqa: E402
from cds_service.devtools import fixtures  # noqa: E402
from cds_service.devtools.localfhir import LocalFhirServer, ensure_node_packages  # noqa: E402

HOST = "127.0.0.1"
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results"
SERVICE = "/cds-services/nms-order-sign"
FEEDBACK = SERVICE + "/feedback"
DISCOVERY = "/cds-services"
WORKERS = 2  # the Docker image's CMD
ISS = "https://soak.nms-cds.local"
KID = "soak-es384"
TOKEN_LIFETIME = 60  # seconds; the replay cache keeps each jti for lifetime + leeway
MAX_MINUTES = 120
GROWTH_LIMIT_PCT = 10.0
REQUEST_TIMEOUT = 30.0
PREFETCH_SCENARIOS = ("classic-nms", "early-nms", "metoclopramide", "iron-pattern", "mimic-sepsis-no-antipsychotic",
                      "past-nms-rechallenge")


# --- processes ------------------------------------------------------------------------------------------

def rss_kb(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else None


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def workers(self) -> list[int]:
        return child_pids(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # our own process group: master and workers
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)


@contextlib.contextmanager
def service(tmp: Path, fhir_origin: str, trusted: Path) -> Iterator[Service]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NMS_CDS_")}
    env.update({
        "PYTHONUNBUFFERED": "1",
        "NMS_CDS_ENVIRONMENT": "production",
        "NMS_CDS_AUTH": "jwt",
        "NMS_CDS_TRUSTED_CLIENTS": str(trusted),
        "NMS_CDS_PUBLIC_BASE_URL": f"http://{HOST}:{port}",
        "NMS_CDS_FHIR_ALLOWLIST": fhir_origin,
        "NMS_CDS_FIXED_NOW": fixtures.ANCHOR.isoformat(),
    })
    log = tmp / "service.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(BIN / "nms-cds"), "serve", "--host", HOST, "--port", str(port),
                                 "--workers", str(WORKERS)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                cwd=tmp, start_new_session=True)
    svc = Service(proc, port, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{svc.url}/healthz", timeout=1).status_code == 200 and len(svc.workers()) == WORKERS:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"service did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)
        yield svc
    finally:
        svc.stop()


# --- the client: tokens and the request mix ---------------------------------------------------------------

class Signer:
    def __init__(self, base_url: str) -> None:
        self.key = ec.generate_private_key(ec.SECP384R1())
        self.base_url = base_url

    def trusted_clients(self, path: Path) -> Path:
        jwk: dict[str, Any] = ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        jwk.update({"kid": KID, "alg": "ES384", "use": "sig"})
        path.write_text(json.dumps([{"iss": ISS, "jwks": {"keys": [jwk]}}]))
        return path

    def token(self, path: str, now: float | None = None, lifetime: int = TOKEN_LIFETIME) -> str:
        now = time.time() if now is None else now
        claims = {"iss": ISS, "aud": self.base_url + path, "iat": int(now), "exp": int(now) + lifetime,
                  "jti": str(uuid.uuid4())}
        return jwt.encode(claims, self.key, algorithm="ES384", headers={"kid": KID, "typ": "JWT"})


@dataclass(frozen=True)
class Kind:
    name: str
    weight: float
    method: str
    path: str
    make: Callable[[], dict[str, Any] | None]  # a fresh body (None for GET)
    expect: Callable[[Any], bool]  # is the answer the right one?


def indicator_is(expected: str | None) -> Callable[[Any], bool]:
    def check(answer: Any) -> bool:
        cards = answer.get("cards") if isinstance(answer, dict) else None
        return isinstance(cards, list) and [c.get("indicator") for c in cards] == ([expected] if expected else [])
    return check


def mix(fhir_base: str) -> list[Kind]:
    kinds: list[Kind] = []
    for scenario_id in PREFETCH_SCENARIOS:
        scenario = fixtures.load_scenario(scenario_id)
        raw = json.dumps(scenario.request)

        def make(raw: str = raw) -> dict[str, Any]:
            body: dict[str, Any] = json.loads(raw)
            body["hookInstance"] = str(uuid.uuid4())
            return body

        kinds.append(Kind(f"prefetch:{scenario_id}", 0.70 / len(PREFETCH_SCENARIOS), "POST", SERVICE, make,
                          indicator_is(scenario.expected.get("indicator"))))
    classic = fixtures.load_scenario("classic-nms").request
    no_prefetch = {k: v for k, v in classic.items() if k != "prefetch"}
    no_prefetch["fhirServer"] = fhir_base
    raw_fhir = json.dumps(no_prefetch)

    def make_fhir() -> dict[str, Any]:
        body: dict[str, Any] = json.loads(raw_fhir)
        body["hookInstance"] = str(uuid.uuid4())
        return body

    kinds.append(Kind("fhir-server:classic-nms", 0.20, "POST", SERVICE, make_fhir, indicator_is("critical")))

    def make_feedback() -> dict[str, Any]:
        return {"feedback": [{"card": str(uuid.uuid4()), "outcome": "overridden",
                              "outcomeTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                              "overrideReason": {"reason": {"system": "https://github.com/nms-cds/nms-cds/"
                                                                      "override-reason", "code": "already-managed"}}}]}

    kinds.append(Kind("feedback", 0.05, "POST", FEEDBACK, make_feedback,
                      lambda a: isinstance(a, dict) and a.get("received") == 1))
    kinds.append(Kind("discovery", 0.05, "GET", DISCOVERY, lambda: None,
                      lambda a: isinstance(a, dict) and bool(a.get("services"))))
    return kinds


# --- saturation ----------------------------------------------------------------------------------------

_LUA = """
local bodies, tokens = {}, {}
for i, name in ipairs({BODIES}) do
  local f = assert(io.open(name, "rb")); bodies[i] = f:read("*a"); f:close()
end
for line in io.lines("TOKENS") do tokens[#tokens + 1] = line end
local threads, n = {}, 0
setup = function(thread) n = n + 1; thread:set("tid", n); thread:set("nthreads", THREADS) end
local i, step = 0, 1
init = function(args) i = tonumber(tid) - 1; step = tonumber(nthreads) end
request = function()
  i = i + step
  local body = bodies[(i % #bodies) + 1]
  local token = tokens[(i % #tokens) + 1]
  local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}
  return wrk.format("POST", "PATH", headers, body)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('SOAKJSON {"requests":%d,"duration_us":%d,"non2xx":%d,"socket":%d}\\n', summary.requests,
    summary.duration, e.status, e.connect + e.read + e.write + e.timeout))
end
"""


def measure_saturation(svc: Service, signer: Signer, kinds: list[Kind], tmp: Path, seconds: int = 10,
                       connections: int = 16) -> dict[str, Any]:
    """wrk at ``connections`` for ``seconds`` on the order-sign mix, each request with its own token."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (make soak installs it) and bench/results/latest.json is missing")
    posts = [k for k in kinds if k.path == SERVICE]
    names = []
    for i, kind in enumerate(posts):
        path = tmp / f"sat-{i}.json"
        path.write_text(json.dumps(kind.make()))
        names.append(path)
    tokens = tmp / "tokens.txt"
    now = time.time()
    count = 40 * seconds * connections  # more than the service can take in the window: no token is reused
    tokens.write_text("\n".join(signer.token(SERVICE, now=now, lifetime=600) for _ in range(count)) + "\n")
    threads = 2
    script = tmp / "saturation.lua"
    script.write_text(_LUA.replace("{BODIES}", "{" + ", ".join(json.dumps(str(n)) for n in names) + "}")
                      .replace("TOKENS", str(tokens)).replace("THREADS", str(threads)).replace("PATH", SERVICE))
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout=10s", "-s", str(script),
           svc.url + SERVICE]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    match = re.search(r"^SOAKJSON (.*)$", proc.stdout, re.M)
    if proc.returncode != 0 or not match:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout[-1500:]} {proc.stderr[-1500:]}")
    raw = json.loads(match.group(1))
    rps = raw["requests"] / (raw["duration_us"] / 1e6)
    if raw["requests"] >= count:
        raise RuntimeError("saturation run used up its pre-signed tokens; raise the token count")
    return {"method": f"wrk -t{threads} -c{connections} -d{seconds}s on the order-sign part of the mix",
            "rps": round(rps, 1), "requests": raw["requests"], "non2xx": raw["non2xx"], "socket_errors": raw["socket"]}


def saturation_from_bench() -> dict[str, Any] | None:
    path = RESULTS / "latest.json"
    try:
        data = json.loads(path.read_text())
        rps = float(data["scenario_1"]["saturation"]["service"]["best_rps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {"method": f"{path.relative_to(ROOT)}: scenario_1.saturation.service.best_rps "
                      f"(make bench, started {data.get('started', '?')})", "rps": rps}


# --- the paced load -------------------------------------------------------------------------------------

@dataclass
class Sample:
    due: float
    started: float
    ended: float
    kind: str
    status: int
    ok: bool
    error: str | None = None


@dataclass
class Recorder:
    lock: threading.Lock = field(default_factory=threading.Lock)
    samples: list[Sample] = field(default_factory=list)

    def add(self, sample: Sample) -> None:
        with self.lock:
            self.samples.append(sample)


def run_load(svc: Service, signer: Signer, kinds: list[Kind], rate: float, seconds: float, recorder: Recorder,
             on_tick: Callable[[float], None], t0: float, seed: int = 20261124) -> None:
    """Open loop: request k is due at t0 + k/rate; a pool of threads sends them as they fall due."""
    rng = random.Random(seed)
    total = int(rate * seconds)
    plan = rng.choices(kinds, weights=[k.weight for k in kinds], k=total)
    counter = iter(range(total))
    counter_lock = threading.Lock()
    stop = threading.Event()

    def worker() -> None:
        session = requests.Session()
        session.trust_env = False
        while not stop.is_set():
            with counter_lock:
                index = next(counter, None)
            if index is None:
                return
            due = t0 + index / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            kind = plan[index]
            body = kind.make()
            headers = {"Authorization": f"Bearer {signer.token(kind.path)}", "X-Request-Id": f"soak-{index}"}
            started = time.monotonic()
            try:
                response = session.request(kind.method, svc.url + kind.path, json=body, headers=headers,
                                           timeout=REQUEST_TIMEOUT)
                ended = time.monotonic()
                try:
                    answer = response.json()
                except ValueError:
                    answer = None
                ok = response.status_code == 200 and kind.expect(answer)
                error = None if ok else f"{response.status_code} {response.text[:200]}"
                recorder.add(Sample(due, started, ended, kind.name, response.status_code, ok, error))
            except requests.RequestException as exc:
                recorder.add(Sample(due, started, time.monotonic(), kind.name, 0, False, type(exc).__name__))

    concurrency = max(8, min(64, int(rate * 0.5) + 8))
    threads = [threading.Thread(target=worker, name=f"soak-{i}", daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    end = t0 + seconds
    try:
        while time.monotonic() < end + REQUEST_TIMEOUT and any(t.is_alive() for t in threads):
            on_tick(time.monotonic() - t0)
            time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=REQUEST_TIMEOUT + 5)


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def summarise(samples: list[Sample]) -> dict[str, Any]:
    ms = [(s.ended - s.started) * 1000 for s in samples]
    lag = [(s.started - s.due) * 1000 for s in samples]
    return {
        "requests": len(samples),
        "errors": sum(not s.ok for s in samples),
        "p50_ms": round(pct(ms, 50), 1), "p95_ms": round(pct(ms, 95), 1), "p99_ms": round(pct(ms, 99), 1),
        "max_ms": round(max(ms, default=0.0), 1),
        "max_schedule_lag_ms": round(max(lag, default=0.0), 1),
    }


# --- main ---------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0,
                        help=f"load duration (default 10, at most {MAX_MINUTES})")
    parser.add_argument("--rate", type=float, help="requests per second (default: half the saturation rate)")
    parser.add_argument("--window", type=float, help="seconds per reporting window (default 60, or duration/10)")
    parser.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= MAX_MINUTES:
        parser.error(f"--minutes must be in (0, {MAX_MINUTES}]")
    seconds = args.minutes * 60
    window = args.window or min(60.0, max(5.0, seconds / 10))
    warmup = min(60.0, max(10.0, seconds * 0.1))
    started_at = datetime.now(UTC)
    ensure_node_packages()

    with tempfile.TemporaryDirectory(prefix="nms-soak-") as tmp_name:
        tmp = Path(tmp_name)
        signer = Signer("")  # the key now; the base URL once the service's port is known
        with LocalFhirServer(load=[fixtures.FIXTURES_ROOT / "scenarios"], quiet=True) as fhir, \
                service(tmp, fhir.origin, signer.trusted_clients(tmp / "trusted-clients.json")) as svc:
            signer.base_url = svc.url
            kinds = mix(fhir.base_url)
            for kind in kinds:  # one correct answer of each kind before anything is measured
                response = requests.request(kind.method, svc.url + kind.path, json=kind.make(), timeout=30,
                                            headers={"Authorization": f"Bearer {signer.token(kind.path)}"})
                if response.status_code != 200 or not kind.expect(response.json()):
                    raise RuntimeError(f"{kind.name}: {response.status_code} {response.text[:300]}")
            saturation = saturation_from_bench()
            if saturation is None:
                print("no bench/results/latest.json: measuring saturation with wrk for 10 s", flush=True)
                saturation = measure_saturation(svc, signer, kinds, tmp)
            rate = args.rate or round(saturation["rps"] * 0.5, 1)
            workers = svc.workers()
            print(f"soak: {args.minutes:g} min at {rate} req/s (saturation {saturation['rps']} req/s: "
                  f"{saturation['method']}); workers {workers}; warm-up {warmup:.0f} s; windows {window:.0f} s",
                  flush=True)

            recorder = Recorder()
            memory: dict[str, Any] = {"samples": []}
            windows: list[dict[str, Any]] = []
            t0 = time.monotonic() + 0.5
            next_window = [window]

            def rss() -> dict[str, int | None]:
                return {str(pid): rss_kb(pid) for pid in svc.workers()}

            def on_tick(elapsed: float, final: bool = False) -> None:
                if "warmup" not in memory and elapsed >= warmup:
                    memory["warmup"] = {"t_s": round(elapsed, 1), "rss_kb": rss()}
                    print(f"  warm-up done at {elapsed:.0f} s: worker RSS {memory['warmup']['rss_kb']} kB", flush=True)
                while next_window[0] <= seconds + 0.5 and (elapsed >= next_window[0] or final):
                    start, stop = next_window[0] - window, next_window[0]
                    with recorder.lock:
                        chunk = [s for s in recorder.samples if start <= s.due - t0 < stop]
                    row = {"from_s": round(start), "to_s": round(stop), **summarise(chunk), "rss_kb": rss()}
                    windows.append(row)
                    print(f"  {row['from_s']:>5}-{row['to_s']:<5} s {row['requests']:>6} req  errors {row['errors']}"
                          f"  p50 {row['p50_ms']} / p95 {row['p95_ms']} / p99 {row['p99_ms']} / max {row['max_ms']} ms"
                          f"  RSS {row['rss_kb']} kB", flush=True)
                    next_window[0] += window

            run_load(svc, signer, kinds, rate, seconds, recorder, on_tick, t0)
            on_tick(time.monotonic() - t0, final=True)
            memory["end"] = {"t_s": round(time.monotonic() - t0, 1), "rss_kb": rss()}
            log_errors = [line for line in svc.log.read_text(errors="replace").splitlines()
                          if '"level":"error"' in line or "Traceback" in line or "WORKER TIMEOUT" in line]
            workers_end = svc.workers()

    samples = recorder.samples
    overall = summarise(samples)
    by_kind = {name: summarise([s for s in samples if s.kind == name]) for name in sorted({s.kind for s in samples})}
    error_examples = [f"{s.kind}: {s.error}" for s in samples if not s.ok][:10]
    growth: dict[str, float | None] = {}
    warm_rss = memory.get("warmup", {}).get("rss_kb", {})
    for pid, before in warm_rss.items():
        after = memory["end"]["rss_kb"].get(pid)
        growth[pid] = round((after - before) / before * 100, 2) if before and after else None
    replaced = sorted(set(workers) ^ set(workers_end))
    errors = overall["errors"] + len(log_errors) + len(replaced) + sum(g is None for g in growth.values())
    max_growth = max((g for g in growth.values() if g is not None), default=0.0)
    achieved = len(samples) / seconds
    result = {
        "started": started_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "minutes": args.minutes,
        "target_rps": rate,
        "achieved_rps": round(achieved, 1),
        "saturation": saturation,
        "service": {"command": f"nms-cds serve --workers {WORKERS} (sync workers, serve.gunicorn.run_server defaults)",
                    "auth": "jwt (ES384, one fresh token per request, lifetime 60 s)",
                    "environment": "production", "fixed_now": fixtures.ANCHOR.isoformat()},
        "mix": {k.name: round(k.weight, 3) for k in kinds},
        "warmup_s": warmup,
        "window_s": window,
        "overall": overall,
        "by_kind": by_kind,
        "windows": windows,
        "errors": errors,
        "error_examples": error_examples,
        "service_log_errors": log_errors[:10],
        "workers_replaced": replaced,
        "memory": {**memory, "growth_pct": growth, "max_growth_pct": max_growth, "limit_pct": GROWTH_LIMIT_PCT},
        "passed": errors == 0 and max_growth < GROWTH_LIMIT_PCT,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"soak: {overall['requests']} requests in {args.minutes:g} min ({achieved:.1f} req/s), errors {errors}, "
          f"p50 {overall['p50_ms']} / p95 {overall['p95_ms']} / p99 {overall['p99_ms']} / max {overall['max_ms']} ms; "
          f"worker RSS growth {growth} % (limit {GROWTH_LIMIT_PCT} %) -> {'PASS' if result['passed'] else 'FAIL'}")
    for example in error_examples + log_errors[:5]:
        print(f"  error: {example}")
    print(f"wrote {args.out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
