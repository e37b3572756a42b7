"""Developer and integrator commands of ``nms-cds``: play the EHR against any FHIR server.

- ``dev``            local FHIR server with the fixture patients + the service (what ``make run`` starts)
- ``load-fixtures``  upload the fixture patients to a FHIR R4 server as transaction Bundles
- ``call``           discover the service, build a patient-view, order-select or order-sign request, send it,
                     print the cards
- ``demo``           run every fixture scenario through the three in-process services and print verdicts
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from cds_service.clinical.valuesets import RXNORM, load
from cds_service.devtools import fixtures
from cds_service.errors import UsageError

TIMEOUT = (3.05, 30.0)  # connect, read: uploads and remote sandboxes can be slow
Printer = Callable[[str], None]


def _err(message: str) -> None:
    print(message, file=sys.stderr)


def _session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    return session


# --- load-fixtures ------------------------------------------------------------------------------------

def _outcome_text(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        return "; ".join(str(i.get("diagnostics") or (i.get("details") or {}).get("text") or i.get("code"))
                         for i in body.get("issue", []))
    return json.dumps(body)[:300]


def fixtures_root(folder: str | None) -> Path | None:
    """The ``--fixtures`` folder, checked: :class:`UsageError` (exit 2) when it holds no scenarios."""
    if folder is None:
        return None
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"--fixtures {folder}: no such folder")
    if not (root / "scenarios").is_dir() or not any((d / "expected.json").is_file()
                                                     for d in (root / "scenarios").iterdir()):
        raise UsageError(f"--fixtures {folder}: no scenarios/<id>/expected.json inside "
                         "(give the folder that holds scenarios/, like fhir_fixtures)")
    return root


def _read_json_argument(option: str, file: str) -> Any:
    path = Path(file)
    if not path.is_file():
        raise UsageError(f"{option} {file}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{option} {file}: cannot be read ({type(exc).__name__})") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{option} {file}: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None


def load_fixtures(fhir_server: str, token: str | None, root: Path | None, rebase: bool) -> int:
    scenarios = fixtures.load_scenarios(root)
    delta = fixtures.delta_to(datetime.now(UTC)) if rebase else None
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    session = _session()
    totals: dict[str, int] = {}
    for scenario in scenarios:
        bundle = fixtures.rebase(scenario.bundle, delta) if delta else scenario.bundle
        try:
            response = session.post(fhir_server.rstrip("/"), json=bundle, headers=headers, timeout=TIMEOUT)
        except requests.RequestException as exc:
            _err(f"error: {scenario.id}: could not reach {fhir_server}: {type(exc).__name__}")
            return 1
        if response.status_code >= 400:
            _err(f"error: {scenario.id}: FHIR server answered {response.status_code}: {_outcome_text(response)}")
            return 1
        statuses: dict[str, int] = {}
        for entry in (response.json().get("entry") or []):
            status = str((entry.get("response") or {}).get("status", "?")).split(" ")[0]
            statuses[status] = statuses.get(status, 0) + 1
        for status, count in statuses.items():
            totals[status] = totals.get(status, 0) + count
        summary = ", ".join(f"{count}×{status}" for status, count in sorted(statuses.items()))
        print(f"{scenario.id}: patient {scenario.patient_id}: {summary}")
    created, updated = totals.get("201", 0), totals.get("200", 0)
    print(f"loaded {len(scenarios)} scenarios: {created} created, {updated} updated")
    return 0


# --- call -----------------------------------------------------------------------------------------------

def _discovery_url(service: str) -> str:
    service = service.rstrip("/")
    return service if service.endswith("/cds-services") else service + "/cds-services"


def _auth_header(args: argparse.Namespace, audience: str) -> dict[str, str]:
    if not args.private_key:
        return {}
    import jwt

    path = Path(args.private_key)
    if not path.is_file():
        raise UsageError(f"--private-key {args.private_key}: no such file")
    key = path.read_text(encoding="utf-8")
    now = int(time.time())
    try:
        token = jwt.encode({"iss": args.iss, "aud": audience, "iat": now, "exp": now + 300,
                            "jti": str(uuid.uuid4())},
                           key, algorithm=args.alg, headers={"kid": args.kid, "typ": "JWT"})
    except (ValueError, TypeError, jwt.PyJWTError) as exc:
        raise UsageError(f"--private-key {args.private_key}: not a PEM private key for --alg {args.alg} "
                         f"({type(exc).__name__})") from None
    return {"Authorization": f"Bearer {token}"}


def draft_order(code: str, patient_id: str) -> dict[str, Any]:
    concept = load().drug(code)
    display = concept.display if concept else f"RxNorm {code}"
    return {
        "resourceType": "MedicationRequest", "id": "draft-" + code, "status": "draft", "intent": "order",
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": datetime.now(UTC).date().isoformat(),
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code, "display": display}],
                                      "text": display},
    }


def fill_prefetch_from_server(templates: dict[str, str], fhir_server: str, patient_id: str,
                              token: str | None) -> dict[str, Any]:
    """Do what an EHR does: run each prefetch template against the FHIR server (first page only)."""
    session = _session()
    headers = {"Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    prefetch: dict[str, Any] = {}
    for key, template in templates.items():
        url = fhir_server.rstrip("/") + "/" + template.replace("{{context.patientId}}", patient_id)
        try:
            response = session.get(url, headers=headers, timeout=TIMEOUT)
        except requests.RequestException:
            continue  # a key the client cannot satisfy is omitted (CDS Hooks 2.0)
        if response.status_code == 404 and "?" not in template:
            prefetch[key] = None
        elif response.ok:
            prefetch[key] = response.json()
    return prefetch


def format_cards(body: dict[str, Any]) -> str:
    cards = body.get("cards", [])
    if not cards:
        return "no cards (the service found nothing to say)"
    out: list[str] = []
    for card in cards:
        out.append(f"[{card['indicator'].upper()}] {card['summary']}")
        out.append("")
        out.append(card.get("detail", ""))
        for suggestion in card.get("suggestions", []):
            out.append("")
            out.append(f"  suggestion: {suggestion['label']}")
            for action in suggestion.get("actions", []):
                target = action.get("resourceId") or (action.get("resource") or {}).get("resourceType", "")
                out.append(f"    - {action['type']} {target}: {action['description']}")
        for link in card.get("links", []):
            out.append(f"  link: {link['label']} <{link['url']}>")
        out.append("")
    return "\n".join(out).rstrip()


UNAUTHORIZED_HINT = (
    "the service requires a CDS Hooks JWT: pass --private-key KEY.pem (and --iss, --kid, --alg as listed for "
    "this client in the service's NMS_CDS_TRUSTED_CLIENTS file)"
)
REFUSED_TOKEN_HINT = (
    "the service refused the JWT: check that --iss and --kid match an entry of its NMS_CDS_TRUSTED_CLIENTS file, "
    "that the entry holds the public key of --private-key, and the service's NMS_CDS_PUBLIC_BASE_URL"
)


def _unauthorized(args: argparse.Namespace, what: str) -> int:
    _err(f"error: {what} answered 401 Unauthorized; "
         + (REFUSED_TOKEN_HINT if args.private_key else UNAUTHORIZED_HINT))
    return 1


def call(args: argparse.Namespace) -> int:
    session = _session()
    discovery = _discovery_url(args.service)
    request_body = _read_json_argument("--request", args.request) if args.request else None
    if args.private_key:
        _auth_header(args, discovery)  # a missing or unusable key is a usage error before any network call
    try:
        found = session.get(discovery, headers={"Accept": "application/json", **_auth_header(args, discovery)},
                            timeout=TIMEOUT)
    except requests.RequestException as exc:
        _err(f"error: cannot reach {discovery}: {type(exc).__name__}")
        return 1
    if found.status_code == 401:
        return _unauthorized(args, "discovery")
    if found.status_code != 200:
        _err(f"error: discovery answered {found.status_code}")
        return 1
    hook = args.hook
    services = [s for s in found.json().get("services", []) if s.get("hook") == hook]
    if not services:
        _err(f"error: the service offers no {hook} hook")
        return 1
    service = services[0]
    _err(f"discovered {service['id']} ({hook}) at {discovery}")
    if request_body is not None:
        if not isinstance(request_body, dict):
            raise UsageError(f"--request {args.request}: not a JSON object (a CDS Hooks request)")
        body = request_body
        if not args.no_rebase:
            body = fixtures.rebase(body, fixtures.delta_to(datetime.now(UTC)))
        if isinstance(body, dict) and body.get("hook") == "order-sign" and hook != "order-sign":
            body = fixtures.request_for_hook(body, hook)  # a fixture's order-sign request, seen by this hook
    else:
        if not args.patient or (hook != "patient-view" and not args.draft):
            _err("error: --patient (and --draft, except for --hook patient-view) are required unless --request "
                 "is given")
            return 2
        context: dict[str, Any] = {"userId": "Practitioner/nms-cds-cli", "patientId": args.patient}
        if hook != "patient-view":
            draft = draft_order(args.draft, args.patient)
            context["draftOrders"] = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": draft}]}
            if hook == "order-select":
                context["selections"] = [f"MedicationRequest/{draft['id']}"]
        body = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context}
        if args.fhir_server:
            body["fhirServer"] = args.fhir_server
            if args.token:
                body["fhirAuthorization"] = {"access_token": args.token, "token_type": "Bearer", "expires_in": 300,
                                             "scope": "user/*.read", "subject": "nms-cds-cli"}
        if args.prefetch:
            if not args.fhir_server:
                _err("error: --prefetch needs --fhir-server")
                return 2
            body["prefetch"] = fill_prefetch_from_server(service.get("prefetch", {}), args.fhir_server,
                                                         args.patient, args.token)
            _err(f"prefetched {len(body['prefetch'])} of {len(service.get('prefetch', {}))} keys")
    url = f"{discovery}/{service['id']}"
    started = time.perf_counter()
    try:
        answer = session.post(url, json=body, headers={"Accept": "application/json", **_auth_header(args, url)},
                              timeout=TIMEOUT)
    except requests.RequestException as exc:
        _err(f"error: cannot reach {url}: {type(exc).__name__}")
        return 1
    _err(f"{answer.status_code} in {(time.perf_counter() - started) * 1000:.0f} ms")
    if answer.status_code == 401:
        return _unauthorized(args, "the service")
    if answer.status_code != 200:
        _err(f"error: {answer.text[:500]}")
        return 1
    print(json.dumps(answer.json(), indent=2, ensure_ascii=False) if args.json else format_cards(answer.json()))
    return 0


# --- demo -----------------------------------------------------------------------------------------------

def demo(args: argparse.Namespace) -> int:
    from cds_service.app import create_app
    from cds_service.config_report import load_settings

    root = fixtures_root(args.fixtures)
    # a throw-away store, removed at the end: demo cards never enter the configured audit (or a production database)
    with tempfile.TemporaryDirectory(prefix="nms-cds-demo-") as data:
        settings = load_settings(auth="off", environment="development", fixed_now=fixtures.ANCHOR,
                                 log_level="WARNING", data_dir=Path(data), database_url=None, redis_url=None)
        app = create_app(settings)
        try:
            return _demo(app, settings, root)
        finally:
            app.extensions["nms_cds"].close()


def _demo(app: Any, settings: Any, root: Path | None) -> int:
    client = app.test_client()
    ids = {"patient-view": settings.patient_view_service_id, "order-select": settings.order_select_service_id,
           "order-sign": settings.service_id}
    failures = 0
    shown: dict[str, Any] | None = None
    print(f"    {'scenario':34} " + " ".join(f"{hook:20}" for hook in fixtures.HOOKS) + " order-sign card")
    for scenario in fixtures.load_scenarios(root):
        cells, summary, ok = [], "(no card)", True
        for hook in fixtures.HOOKS:
            response = client.post(f"/cds-services/{ids[hook]}", json=scenario.request_for(hook))
            cards = response.get_json().get("cards", []) if response.status_code == 200 else []
            got = cards[0]["indicator"] if cards else None
            hooks = scenario.expected.get("hooks") or {"order-sign": scenario.expected.get("indicator")}
            expected = hooks.get(hook)
            good = got == expected and response.status_code == 200
            ok = ok and good
            cells.append(f"{got or 'none':8}" + (f"(want {expected or 'none'})" if not good else "").ljust(12))
            if hook == "order-sign":
                summary = cards[0]["summary"] if cards else "(no card)"
                if got == "critical" and (shown is None or scenario.id == "classic-nms"):
                    shown = {"scenario": scenario.id, "body": response.get_json()}
        failures += not ok
        print(f"{'ok ' if ok else 'BAD'} {scenario.id:34} " + " ".join(cells) + f" {summary}")
    if shown is not None:
        print(f"\n--- full card for scenario {shown['scenario']} ---\n")
        print(format_cards(shown["body"]))
    return 1 if failures else 0


# --- dev ------------------------------------------------------------------------------------------------

def dev(args: argparse.Namespace) -> int:
    from cds_service.config_report import load_settings, unknown_variables
    from cds_service.devtools import localfhir
    from cds_service.serve.gunicorn import run_server
    from cds_service.serve.preflight import ensure_port_free

    for note in unknown_variables():
        _err(f"nms-cds: warning: {note}")
    load_settings(auth=os.environ.get("NMS_CDS_AUTH", "off"), environment="development")  # fail before starting
    ensure_port_free(args.host, args.port, "the CDS service", "--port (make run PORT=...)")
    with_fhir = localfhir.node_available()
    if with_fhir:
        ensure_port_free("127.0.0.1", args.fhir_port, "the local FHIR server", "--fhir-port (make run FHIR_PORT=...)")
    server: localfhir.LocalFhirServer | None = None
    fhir_base = None
    owner = os.getpid()
    tmp = Path(tempfile.mkdtemp(prefix="nms-cds-dev-"))
    try:
        if with_fhir:
            delta = fixtures.delta_to(datetime.now(UTC))
            for scenario in fixtures.load_scenarios():
                (tmp / f"{scenario.id}.json").write_text(json.dumps(fixtures.rebase(scenario.bundle, delta)))
            server = localfhir.LocalFhirServer(load=[tmp], port=args.fhir_port).start()
            fhir_base = server.base_url
            _err(f"local FHIR server with {len(list(tmp.iterdir()))} fixture patients (times moved to now): "
                 f"{fhir_base}")
        else:
            _err("node/npm packages not available: serving without the local FHIR server (prefetch only)")
        settings = load_settings(
            auth=os.environ.get("NMS_CDS_AUTH", "off"),
            environment="development",
            public_base_url=f"http://{args.host}:{args.port}",
            fhir_allowlist=[urlsplit(fhir_base)._replace(path="").geturl()] if fhir_base else [],
            # the trend view opens the local FHIR server without a SMART launch (docs/trend-view.md)
            smart_open_fhir_server=fhir_base,
        )
        _err(f"CDS service (development, auth {settings.auth.value}): http://{args.host}:{args.port}/cds-services")
        if fhir_base:
            _err(f"try:  nms-cds call --service http://{args.host}:{args.port} "
                 f"--fhir-server {fhir_base} --patient nms-classic-nms --draft 5093")
            _err(f"trend view (no SMART launch in development): http://{args.host}:{args.port}/app/launch.html"
                 "?patient=nms-classic-nms")
        return run_server(settings, host=args.host, port=args.port, workers=1, threads=4)
    finally:
        # gunicorn forks its workers inside run_server, and a worker's exit unwinds through this frame too:
        # only the process that started the FHIR server stops it (a worker waiting for it hung until SIGKILL).
        if os.getpid() == owner:
            if server is not None:
                server.stop()
            shutil.rmtree(tmp, ignore_errors=True)


def register(sub: Any) -> None:
    """Add the tool sub-commands to the ``nms-cds`` parser."""
    p = sub.add_parser("dev", help="local FHIR server with the fixtures + the service (development mode)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--fhir-port", type=int, default=8081)
    p.set_defaults(func=dev)

    p = sub.add_parser("load-fixtures", help="upload the fixture patients to a FHIR R4 server")
    p.add_argument("--fhir-server", required=True, help="FHIR base URL, e.g. https://hapi.fhir.org/baseR4")
    p.add_argument("--token", help="bearer token for the FHIR server")
    p.add_argument("--fixtures", help="folder holding scenarios/ (default: the packaged fixtures)")
    p.add_argument("--no-rebase", action="store_true", help="keep the fixtures' own dates (default: move to now)")
    p.set_defaults(func=lambda a: load_fixtures(a.fhir_server, a.token, fixtures_root(a.fixtures), not a.no_rebase))

    p = sub.add_parser("call", help="play the EHR: discover, build a hook request, print the cards")
    p.add_argument("--service", required=True, help="service base URL or discovery URL")
    p.add_argument("--hook", default="order-sign", choices=["patient-view", "order-select", "order-sign"],
                   help="which hook to fire: chart opened, drug picked, orders signed (default order-sign)")
    p.add_argument("--fhir-server", help="FHIR base URL the service should use")
    p.add_argument("--patient", help="patient id on that FHIR server")
    p.add_argument("--draft", help="RxNorm code of the draft medication order, e.g. 5093 (haloperidol); "
                                   "order-select selects it")
    p.add_argument("--prefetch", action="store_true", help="fill prefetch from the templates, as an EHR does")
    p.add_argument("--request", help="send this ready-made request file instead (times moved to now); an "
                                     "order-sign fixture request is turned into the --hook's request")
    p.add_argument("--no-rebase", action="store_true", help="with --request: keep the file's dates")
    p.add_argument("--token", help="FHIR access token to pass as fhirAuthorization")
    p.add_argument("--private-key", help="PEM key to sign a CDS Hooks JWT (when the service requires auth)")
    p.add_argument("--iss", default="https://nms-cds.local/cli")
    p.add_argument("--kid", default="nms-cds-cli")
    p.add_argument("--alg", default="ES384", choices=["ES384", "RS384", "ES256", "RS256"])
    p.add_argument("--json", action="store_true", help="print the raw JSON answer")
    p.set_defaults(func=call)

    p = sub.add_parser("demo", help="run every fixture scenario through the three hooks in-process; a verdict each")
    p.add_argument("--fixtures", help="folder holding scenarios/ (default: the packaged fixtures)")
    p.set_defaults(func=demo)
