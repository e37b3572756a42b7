"""``make bench-alternatives``: what the prefetch path's alternatives would buy, measured in-process.

The second performance round asked for numbers on faster decoders (orjson, msgspec, including msgspec decoding
straight into typed structures with validation), mypyc for the pure core, skipping the validation of resources
outside the time windows, and lazy card text. This script measures each on the benchmark's scenario 1 request (the 7-day
admission, 195 KB) and on scenario 2's 10,000-Observation request (8.5 MB), in one process, best of several
repeats, next to the service's own stages:

    .venv/bin/pip install orjson msgspec        # not project dependencies; the script says when one is missing
    .venv/bin/python bench/alternatives.py [--mypyc] [--repeats 7]

``--mypyc`` compiles a copy of the clinical core and the FHIR flattening (``cds_service/clinical/*.py``,
``cds_service/fhir/`` extraction modules) with mypyc into a temporary directory (about 75 s, needs a C compiler) and
times the same stages there, in a subprocess. Results: ``bench/results/alternatives.json`` and a table on
standard output (docs/performance.md quotes it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results" / "alternatives.json"


def best_ms(fn: Callable[[], object], *, number: int, repeats: int) -> float:
    """Best mean over ``repeats`` runs of ``number`` calls, in ms (the least disturbed run)."""
    fn()
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(number):
            fn()
        runs.append((time.perf_counter() - started) / number * 1000)
    return round(min(runs), 3)


def _prepare_environment(work: Path) -> None:
    for key in [k for k in os.environ if k.startswith("NMS_CDS_")]:
        del os.environ[key]
    from cds_service.devtools.fixtures import ANCHOR

    os.environ.update(NMS_CDS_ENVIRONMENT="production", NMS_CDS_AUTH="off", NMS_CDS_FIXED_NOW=ANCHOR.isoformat())
    os.chdir(work)  # the default SQLite store (var/) lands in the temporary directory


def stages(body: bytes, *, number: int, repeats: int) -> dict[str, float]:
    """The service's own stages on one request body (in-process, production settings, auth off)."""
    from cds_service.app import create_app
    from cds_service.clinical import assess
    from cds_service.protocol.decode import load_json
    from cds_service.protocol.parse import parse_hook_request
    from cds_service.services.engine import CallReport

    app = create_app()
    logging.disable(logging.CRITICAL)
    service = app.extensions["nms_cds"].services["nms-order-sign"]
    engine, policy = service.engine, service.policy
    client = app.test_client()
    request = parse_hook_request(json.loads(body), expected_hook="order-sign")
    gathered = engine.gather(policy, request, CallReport())
    inp = engine.extract(gathered, policy.exposure_drafts(request), request)
    assessment = assess(inp)
    headers = {"Content-Type": "application/json"}
    out = {
        "http_request_ms": best_ms(lambda: client.post("/cds-services/nms-order-sign", data=body, headers=headers),
                                   number=number, repeats=repeats),
        "body_checks_and_decode_ms": best_ms(lambda: load_json(body, max_depth=64), number=number, repeats=repeats),
        "extract_ms": best_ms(lambda: engine.extract(gathered, policy.exposure_drafts(request), request),
                              number=number, repeats=repeats),
        "assess_ms": best_ms(lambda: assess(inp), number=number, repeats=repeats),
        "cards_ms": best_ms(lambda: policy.cards(assessment, request, gathered), number=number, repeats=repeats),
    }
    logging.disable(logging.NOTSET)
    return out


def decoders(body: bytes, *, number: int, repeats: int) -> dict[str, Any]:
    """Untyped decoders (what the floor would have to use too) and msgspec's typed decoding."""
    out: dict[str, Any] = {"json.loads": best_ms(lambda: json.loads(body), number=number, repeats=repeats)}
    try:
        import orjson

        out["orjson.loads"] = best_ms(lambda: orjson.loads(body), number=number, repeats=repeats)
    except ImportError:
        out["orjson.loads"] = "not installed"
    try:
        import msgspec
    except ImportError:
        out["msgspec"] = "not installed"
        return out
    untyped = msgspec.json.Decoder()
    out["msgspec untyped"] = best_ms(lambda: untyped.decode(body), number=number, repeats=repeats)
    for patterns in (False, True):
        label = "msgspec typed, FHIR string patterns" if patterns else "msgspec typed, types only"
        decode = typed_decoder(patterns)
        out[label] = best_ms(lambda: decode(body), number=number, repeats=repeats)  # noqa: B023 - called at once
    return out


def typed_decoder(patterns: bool) -> Callable[[bytes], list[Any]]:
    """A msgspec decoder for the request: the envelope typed, each prefetch resource kept raw, Observations
    decoded into structs that forbid unknown members (the "plain" subset of plain_json.plain_observation), with
    or without fhir_core's string patterns as msgspec constraints."""
    from typing import Annotated

    import msgspec
    from msgspec import UNSET, Meta, Raw, UnsetType

    def pattern(regex: str) -> Any:
        return Annotated[str, Meta(pattern=regex)] if patterns else str

    code = pattern(r"^[!-~]+(?: [!-~]+)*$")
    uri = pattern(r"^[!-~]+$")
    ident = pattern(r"^[A-Za-z0-9\-.]{1,255}$")
    text = pattern(r"\S")
    date_time = pattern(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-5][0-9](?:\.[0-9]{1,6})?"
                        r"(?:Z|[+-][0-9]{2}:[0-9]{2})$")
    opts = {"forbid_unknown_fields": True}
    coding = msgspec.defstruct("Coding", [("system", uri | UnsetType, UNSET), ("version", text | UnsetType, UNSET),
                                          ("code", code | UnsetType, UNSET), ("display", text | UnsetType, UNSET)],
                               **opts)
    concept = msgspec.defstruct("CodeableConcept", [("coding", list[coding] | UnsetType, UNSET),
                                                    ("text", text | UnsetType, UNSET)], **opts)
    reference = msgspec.defstruct("Reference", [("reference", text | UnsetType, UNSET),
                                                ("type", uri | UnsetType, UNSET),
                                                ("display", text | UnsetType, UNSET)], **opts)
    meta = msgspec.defstruct("Meta", [("versionId", ident | UnsetType, UNSET),
                                      ("lastUpdated", date_time | UnsetType, UNSET),
                                      ("source", uri | UnsetType, UNSET), ("profile", list[uri] | UnsetType, UNSET),
                                      ("tag", list[coding] | UnsetType, UNSET),
                                      ("security", list[coding] | UnsetType, UNSET)], **opts)
    quantity = msgspec.defstruct("Quantity", [("value", float | UnsetType, UNSET), ("unit", text | UnsetType, UNSET),
                                              ("system", uri | UnsetType, UNSET), ("code", code | UnsetType, UNSET)],
                                 **opts)
    ranges = msgspec.defstruct("Range", [("low", quantity | UnsetType, UNSET), ("high", quantity | UnsetType, UNSET),
                                         ("type", concept | UnsetType, UNSET), ("text", text | UnsetType, UNSET)],
                               **opts)
    component = msgspec.defstruct("Component", [("code", concept), ("valueQuantity", quantity | UnsetType, UNSET),
                                                ("interpretation", list[concept] | UnsetType, UNSET),
                                                ("referenceRange", list[ranges] | UnsetType, UNSET)],
                                  **opts)
    observation = msgspec.defstruct("Observation", [
        ("resourceType", str), ("status", code), ("code", concept), ("id", ident | UnsetType, UNSET),
        ("meta", meta | UnsetType, UNSET), ("category", list[concept] | UnsetType, UNSET),
        ("subject", reference | UnsetType, UNSET), ("encounter", reference | UnsetType, UNSET),
        ("performer", list[reference] | UnsetType, UNSET),
        ("effectiveDateTime", date_time | UnsetType, UNSET), ("issued", date_time | UnsetType, UNSET),
        ("valueQuantity", quantity | UnsetType, UNSET),
        ("interpretation", list[concept] | UnsetType, UNSET),
        ("referenceRange", list[ranges] | UnsetType, UNSET),
        ("component", list[component] | UnsetType, UNSET)], **opts)

    # defstruct, not class statements: this module's annotations are strings, and these types are local
    head_t = msgspec.defstruct("Head", [("resourceType", str, "")])
    entry_t = msgspec.defstruct("Entry", [("resource", Raw, Raw(b"null"))])
    bundle_t = msgspec.defstruct("Bundle", [("entry", list[entry_t], [])])
    envelope_t = msgspec.defstruct("Envelope", [("hook", str), ("hookInstance", str), ("context", Raw),
                                                ("prefetch", dict[str, Raw], {})])

    envelope, bundle, head = (msgspec.json.Decoder(t) for t in (envelope_t, bundle_t, head_t))
    typed, untyped = msgspec.json.Decoder(observation), msgspec.json.Decoder()

    def decode(body: bytes) -> list[Any]:
        out = []
        for raw in envelope.decode(body).prefetch.values():
            for entry in bundle.decode(raw).entry:
                kind = head.decode(entry.resource).resourceType
                out.append(typed.decode(entry.resource) if kind == "Observation" else untyped.decode(entry.resource))
        return out

    return decode


def long_stay_request() -> dict[str, Any]:
    """Scenario 4's 45-day stay (vital signs every 4 h) as a prefetch request, filled by the service's templates."""
    from bench import scenarios
    from cds_service.devtools.fixtures import fill_prefetch

    resources = scenarios.admission_resources(scenarios.LONG_STAY_DAYS)
    prefetch = fill_prefetch(resources, scenarios.prefetch_templates(), scenarios.PATIENT_ID)
    return scenarios._request("long-stay", prefetch)


def window_skip(request: dict[str, Any], *, number: int, repeats: int) -> dict[str, Any]:
    """What skipping the validation of Observations outside the rules' windows could save: the flattening cost
    of the vital signs older than the widest vital-sign window (the baseline's 30-day fallback), measured by
    flattening only those. Laboratory results are left in: the falling-iron rule reads the last serum iron
    before the lab window at any age."""
    from cds_service.devtools.fixtures import ANCHOR
    from cds_service.fhir import extract, observations

    oldest = ANCHOR.timestamp() - 30 * 86400
    relevant = observations.relevant_loinc()
    vitals = [e["resource"] for key in ("temperature", "vitals")
              for e in (request.get("prefetch", {}).get(key) or {}).get("entry", [])
              if observations.has_code(e["resource"], relevant)]
    old = [r for r in vitals
           if datetime.fromisoformat(r.get("effectiveDateTime", "1970-01-01T00:00:00Z")).timestamp() < oldest]

    def flatten(resources: list[dict[str, Any]]) -> None:
        observations.observations(resources, extract.Extracted())

    return {"relevant_vital_signs": len(vitals), "older_than_every_window": len(old),
            "flatten_all_ms": best_ms(lambda: flatten(vitals), number=number, repeats=repeats),
            "flatten_older_ms": best_ms(lambda: flatten(old), number=number, repeats=repeats) if old else 0.0}


def mypyc_stages(body_path: Path, repeats: int) -> dict[str, Any]:
    """Compile the pure core and the flattening with mypyc in a copy of the tree; time the stages there."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        return {"skipped": "no C compiler"}
    mypyc = Path(sys.executable).parent / "mypyc"
    with tempfile.TemporaryDirectory(prefix="nms-cds-mypyc-") as tmp:
        copy = Path(tmp) / "tree"
        shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".venv", "node_modules", ".git", "var", "build"))
        core = sorted(str(p.relative_to(copy)) for p in (copy / "cds_service" / "clinical").glob("*.py")
                      if p.name != "__init__.py")
        modules = [*core, *(f"cds_service/fhir/{name}.py" for name in (
            "extract", "versions", "plain_types", "plain_json", "observations", "medications", "history"))]
        started = time.perf_counter()
        build = subprocess.run([str(mypyc), *modules], cwd=copy, capture_output=True, text=True, timeout=900)
        seconds = round(time.perf_counter() - started, 1)
        if build.returncode != 0:
            return {"skipped": "mypyc failed: " + build.stdout[-300:] + build.stderr[-300:]}
        run = subprocess.run([sys.executable, str(copy / "bench" / "alternatives.py"), "--stages-only",
                              str(body_path), "--repeats", str(repeats)],
                             cwd=copy, capture_output=True, text=True, timeout=900)
        if run.returncode != 0:
            return {"skipped": "compiled run failed: " + run.stderr[-300:]}
        result: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
        result["compile_seconds"] = seconds
        result["compiled_modules"] = modules
        return result


def machine() -> dict[str, Any]:
    return {"nproc": os.cpu_count(), "python": platform.python_version(), "load_average": list(os.getloadavg())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--mypyc", action="store_true", help="also compile the core with mypyc and time it")
    parser.add_argument("--stages-only", metavar="BODY", help=argparse.SUPPRESS)  # used by --mypyc's subprocess
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="nms-cds-alternatives-"))
    _prepare_environment(work)
    if args.stages_only:
        print(json.dumps(stages(Path(args.stages_only).read_bytes(), number=40, repeats=args.repeats)))
        return 0
    from bench import scenarios

    s1 = scenarios.dumps(scenarios.admission_request())
    s2 = scenarios.dumps(scenarios.long_record_request(10_000))
    results: dict[str, Any] = {"started": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "machine": machine()}
    results["scenario_1"] = {"request_bytes": len(s1), "stages": stages(s1, number=40, repeats=args.repeats),
                             "decoders": decoders(s1, number=40, repeats=args.repeats)}
    stay = long_stay_request()
    results["long_stay_prefetch"] = {"request_bytes": len(scenarios.dumps(stay)),
                                     "window_skip": window_skip(stay, number=10, repeats=args.repeats)}
    results["scenario_2"] = {"request_bytes": len(s2), "decoders": decoders(s2, number=3, repeats=args.repeats)}
    if args.mypyc:
        body_path = work / "s1.json"
        body_path.write_bytes(s1)
        results["scenario_1"]["mypyc"] = mypyc_stages(body_path, args.repeats)
    results["machine"]["load_average_after"] = list(os.getloadavg())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(markdown(results))
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


def markdown(results: dict[str, Any]) -> str:
    s1, s2 = results["scenario_1"], results["scenario_2"]
    lines = [f"In-process, best of several runs; Python {results['machine']['python']}, "
             f"{results['machine']['nproc']} CPUs, load average {results['machine']['load_average'][0]:.2f} at start.",
             "", "| stage (scenario 1, 195 KB) | ms | with mypyc (core + flattening compiled) |", "|---|---|---|"]
    compiled = s1.get("mypyc", {})
    for key, value in s1["stages"].items():
        other = compiled.get(key, compiled.get("skipped", "not run")) if compiled else "not run (--mypyc)"
        lines.append(f"| {key.removesuffix('_ms').replace('_', ' ')} | {value} | {other} |")
    lines += ["", "| decoder | scenario 1 (195 KB) ms | scenario 2 (8.5 MB) ms |", "|---|---|---|"]
    for key, value in s1["decoders"].items():
        lines.append(f"| {key} | {value} | {s2['decoders'].get(key, '')} |")
    skip = results["long_stay_prefetch"]["window_skip"]
    lines += ["", f"Window skip (scenario 4's 45-day stay as prefetch): {skip['older_than_every_window']} of "
              f"{skip['relevant_vital_signs']} vital signs are older than every vital-sign window; flattening them "
              f"costs {skip['flatten_older_ms']} ms of {skip['flatten_all_ms']} ms for all vital signs. (Scenario 1's "
              "7-day admission has none outside the windows.)"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
