"""``nms-cds watch``: the surveillance process (argparse, settings, the loop, signals, metrics)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any

from cds_service.watch.runner import PassResult

log = logging.getLogger("cds_service.watch")


class _Metrics:
    """Prometheus metrics of the watch process, on their own registry (served on ``--metrics-port``)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.seconds = Histogram("nms_cds_watch_pass_duration_seconds", "Duration of a surveillance pass",
                                 registry=self.registry, buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300))
        self.evaluated = Counter("nms_cds_watch_patients_evaluated", "Patients evaluated", registry=self.registry)
        self.findings = Counter("nms_cds_watch_findings", "Warning or critical assessments", registry=self.registry)
        self.entries = Counter("nms_cds_watch_worklist_entries", "New worklist entries", registry=self.registry)
        self.errors = Counter("nms_cds_watch_errors", "Failures by kind", ["kind"], registry=self.registry)
        self.lag = Gauge("nms_cds_watch_last_pass_timestamp_seconds", "When the last pass started (lag = now - "
                         "this)", registry=self.registry)
        self.patients = Gauge("nms_cds_watch_patients_found", "Patients with an exposure record in the last pass",
                              registry=self.registry)

    def observe(self, r: PassResult) -> None:
        self.seconds.observe(r.seconds)
        self.evaluated.inc(r.evaluated)
        self.findings.inc(r.findings)
        self.entries.inc(r.new_entries)
        self.errors.labels("fhir").inc(r.fhir_errors)
        self.errors.labels("store").inc(r.store_errors)
        self.lag.set(r.started_at)
        self.patients.set(r.patients_found)


def run(args: argparse.Namespace) -> int:
    from cds_service.config_report import load_settings
    from cds_service.errors import ConfigError, StoreUnavailable
    from cds_service.logs import configure
    from cds_service.net.http import new_session
    from cds_service.runtime import Runtime
    from cds_service.watch.auth import token_source
    from cds_service.watch.deliver import Deliverer
    from cds_service.watch.runner import Watcher

    try:
        settings = load_settings(auth="off")  # the watcher answers no CDS client: no client authentication
    except ConfigError as exc:
        print(f"nms-cds watch: {exc}", file=sys.stderr)
        return 2
    configure(settings.log_level)
    if not settings.watch_fhir_server:
        print("nms-cds watch: set NMS_CDS_WATCH_FHIR_SERVER (and allow it in NMS_CDS_FHIR_ALLOWLIST)",
              file=sys.stderr)
        return 2
    metrics = _Metrics()
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr="127.0.0.1", registry=metrics.registry)
    verify = settings.tls_trust[0]
    try:
        runtime = Runtime.build(settings)
    except StoreUnavailable as exc:
        print(f"nms-cds watch: store unavailable: {exc.cause}", file=sys.stderr)
        return 1
    with runtime, new_session(verify) as session:
        timeout = (settings.fhir_connect_timeout, settings.fhir_read_timeout)
        deliverer = Deliverer(session, webhook=settings.watch_webhook_url,
                              fhir_base=settings.watch_fhir_server if settings.watch_write_back else None,
                              timeout=timeout)
        watcher = Watcher(runtime, session, token=token_source(settings, session), deliverer=deliverer)

        def stop(signum: int, frame: Any) -> None:
            watcher.stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

        failures: list[int] = []

        def report(r: PassResult) -> None:
            metrics.observe(r)
            failures.append(r.fhir_errors + r.store_errors)
            if args.once:
                print(f"patients {r.patients_found}, evaluated {r.evaluated}, findings {r.findings}, new worklist "
                      f"entries {r.new_entries}, delivered {r.delivered}, FHIR errors {r.fhir_errors}, "
                      f"store errors {r.store_errors}, {r.seconds:.2f} s")

        watcher.loop(passes=1 if args.once else None, on_pass=report)
    return 1 if args.once and failures and failures[-1] else 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("watch", help="background surveillance: evaluate the patients on dopamine antagonists every "
                                     "NMS_CDS_WATCH_INTERVAL_SECONDS and keep a worklist (docs/surveillance.md)")
    p.add_argument("--once", action="store_true", help="one pass, print its numbers, exit")
    p.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics on 127.0.0.1:PORT")
    p.set_defaults(func=run)
