"""One surveillance pass, and the loop of passes.

A pass: find the patients with an antagonist or dopaminergic record in effect (:mod:`.census`); for each,
take its lease (so no two replicas evaluate one patient at once); run the ``patient-view`` engine with no
prefetch against the FHIR server (the same rules and cards as when the chart is opened); keep a new or
worsened warning or critical finding on the worklist; release the patient until the next pass. Then deliver
the entries not yet delivered (also those a dead replica left behind). A failing FHIR server or store ends
the pass with the failure counted, never the process.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import requests

from cds_service.audit import patient_token
from cds_service.errors import FhirError, PreconditionFailed, StoreUnavailable
from cds_service.fhir.paging import PageLimits, ServerBusy
from cds_service.protocol.parse import HookRequest
from cds_service.runtime import Runtime
from cds_service.store.worklist import Worklist
from cds_service.watch import census
from cds_service.watch.deliver import Deliverer

log = logging.getLogger("cds_service.watch")

RANK = {"warning": 1, "critical": 2}
SERVICE_ID = "nms-patient-view"
WATCH_USER = "Device/nms-cds-watch"


@dataclass
class PassResult:
    started_at: float
    seconds: float = 0.0
    patients_found: int = 0
    evaluated: int = 0
    leased_elsewhere: int = 0
    findings: int = 0  # warning or critical assessments
    new_entries: int = 0
    delivered: int = 0
    fhir_errors: int = 0
    store_errors: int = 0
    census_requests: int = 0
    census_resources: int = 0
    due: int = 0  # patients with new data (or new on the drugs, or all on a full pass)
    retry_after: float = 0.0  # the FHIR server's Retry-After: the next pass waits at least this long
    capped: list[str] = field(default_factory=list)


class Watcher:
    def __init__(self, runtime: Runtime, session: requests.Session, *, owner: str | None = None,
                 token: Callable[[], str | None] = lambda: None, deliverer: Deliverer | None = None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        settings = runtime.settings
        if not settings.watch_fhir_server:
            raise ValueError("NMS_CDS_WATCH_FHIR_SERVER is not set: the watcher has no FHIR server to read")
        self.runtime = runtime
        self.settings = settings
        self.base = settings.watch_fhir_server.rstrip("/")
        self.session = session
        self.owner = owner or f"watch-{uuid.uuid4()}"
        self.token = token
        self.worklist = Worklist(runtime.store)
        self.deliverer = deliverer
        self.wall_clock = wall_clock
        self.stopping = threading.Event()
        self.last_full: float | None = None  # when the last pass that evaluated everyone started
        self.changed_since: datetime | None = None  # the server-clock mark of the last pass
        self.watched: set[str] = set()

    def evaluate(self, patient_id: str, result: PassResult, access_token: str | None, now: datetime) -> None:
        """Lease, assess and record one patient."""
        pseudonym = patient_token(patient_id, self.runtime.hash_key, opt_in=False) or patient_id
        wall = self.wall_clock()
        if not self.worklist.lease(pseudonym, self.owner, until=wall + self.settings.watch_lease_seconds, now=wall):
            result.leased_elsewhere += 1
            return
        req = HookRequest.server_read("patient-view", patient_id, self.base, access_token, WATCH_USER)
        try:
            response, report = self.runtime.services[SERVICE_ID].call(req)
        except (PreconditionFailed, FhirError) as exc:
            result.fhir_errors += 1
            log.warning("patient not evaluated", extra={"event": "watch-fhir-error", "error": type(exc).__name__})
            return  # the lease runs out, and the next pass (or another replica) tries again
        result.evaluated += 1
        cards = response.get("cards") or []
        card = cards[0] if cards else None
        indicator = card.get("indicator") if card else None
        if card is not None and indicator in RANK:
            result.findings += 1
            onset = report.onset.isoformat() if report.onset else "no-onset"
            if not self.worklist.open_at_least(pseudonym, RANK, RANK[indicator], f"|{onset}"):
                added = self.worklist.add(
                    patient=pseudonym, patient_ref=f"Patient/{patient_id}", finding_key=f"{indicator}|{onset}",
                    indicator=str(indicator), summary=str(card.get("summary", "")), card_uuid=str(card.get("uuid")),
                    evidence=report.evidence, criteria_met_at=report.onset.timestamp() if report.onset else None,
                    now=self.wall_clock())
                if added is not None:
                    result.new_entries += 1
                    log.info("worklist entry", extra={"event": "worklist-new", "indicator": indicator})
        # evaluated: hold the patient for the rest of this interval, so another replica does not repeat it
        done = self.wall_clock() + self.settings.watch_interval_seconds * 0.9
        self.worklist.lease(pseudonym, self.owner, until=done, now=self.wall_clock(), renew=True)

    def run_pass(self) -> PassResult:
        result = PassResult(started_at=self.wall_clock())
        started = time.perf_counter()
        now = self.runtime.clock()
        access_token = None
        try:
            access_token = self.token()
            limits = PageLimits(self.settings.fhir_connect_timeout, self.settings.fhir_read_timeout,
                                         self.settings.watch_max_pages)
            real_start = datetime.now(UTC)
            found = census.find(self.base, self.session, limits, now=now, token=access_token)
            result.census_requests, result.census_resources = found.requests, found.resources
            result.capped, result.patients_found = found.capped, len(found.patients)
            due = set(found.patients)
            full = self.last_full is None or result.started_at - self.last_full >= self.settings.watch_full_pass_seconds
            if not full and self.changed_since is not None:
                # only what changed since the last pass (minus a minute of clock skew), and who is new on the drugs
                new = census.changed(self.base, self.session, limits, patients=found.patients & self.watched,
                                     since=self.changed_since - timedelta(minutes=1), token=access_token)
                result.census_requests += new.requests
                result.census_resources += new.resources
                due = (found.patients & new.patients) | (found.patients - self.watched)
            if full:
                self.last_full = result.started_at
            self.watched = set(found.patients)
            self.changed_since = real_start
            result.due = len(due)
            for patient_id in sorted(due):
                if self.stopping.is_set():
                    break
                try:
                    self.evaluate(patient_id, result, access_token, now)
                except StoreUnavailable:
                    result.store_errors += 1
            self.deliver(result, access_token, now)
        except ServerBusy as exc:
            result.fhir_errors += 1
            result.retry_after = exc.retry_after
            log.warning("surveillance pass deferred", extra={"event": "watch-fhir-busy",
                                                             "error": f"Retry-After {exc.retry_after:g} s"})
        except (requests.RequestException, ValueError) as exc:
            result.fhir_errors += 1
            log.warning("surveillance pass failed", extra={"event": "watch-fhir-error", "error": type(exc).__name__})
        except StoreUnavailable as exc:
            result.store_errors += 1
            log.warning("surveillance pass failed", extra={"event": "watch-store-error", "error": exc.cause})
        result.seconds = time.perf_counter() - started
        log.info("surveillance pass", extra={"event": "watch-pass", "patients": result.patients_found,
                                             "evaluated": result.evaluated, "new_entries": result.new_entries,
                                             "seconds": round(result.seconds, 3)})
        return result

    def deliver(self, result: PassResult, access_token: str | None, now: datetime) -> None:
        if self.deliverer is None or not self.deliverer.targets:
            return
        for entry in self.worklist.undelivered():
            try:
                ok = self.deliverer.send(entry, now=now, token=access_token)
            except requests.RequestException:
                ok = False
            if ok:
                self.worklist.mark_delivered(entry.id, now=self.wall_clock())
                result.delivered += 1
            else:
                result.fhir_errors += 1

    def loop(self, *, passes: int | None = None, on_pass: Callable[[PassResult], None] | None = None) -> None:
        """Run passes every interval until stopped (or ``passes`` have run)."""
        done = 0
        while not self.stopping.is_set():
            began = time.monotonic()
            result = self.run_pass()
            done += 1
            if on_pass is not None:
                on_pass(result)
            if passes is not None and done >= passes:
                return
            wait = max(self.settings.watch_interval_seconds - (time.monotonic() - began), result.retry_after, 0.0)
            self.stopping.wait(wait)
