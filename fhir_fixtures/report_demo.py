"""Build docs/operations.md's example ``nms-cds report`` from the fixture demo (``make report-example``).

Every fixture scenario is served in-process (as ``nms-cds demo`` does) on simulated days over 30 days,
several calls a day, into a throw-away SQLite store; the clinicians' feedback is SIMULATED with a fixed
seed (accept/override shares per indicator below, reasons from the card's override list). Writes the
text report to docs/report-example.txt and the chart to docs/img/report-example.png.
"""

from __future__ import annotations

import random
import shutil
import sys
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cds_service import report
from cds_service.app import create_app
from cds_service.config import Settings
from cds_service.devtools import fixtures
from cds_service.services.override_reasons import OVERRIDE_REASONS, OVERRIDE_SYSTEM

REPO = Path(__file__).resolve().parents[1]

END = datetime(2026, 11, 30, 18, 0, tzinfo=UTC)
DAYS = 30
# (accepted, overridden) shares of cards per indicator; the rest get no feedback
SHARES = {"critical": (0.55, 0.30), "warning": (0.30, 0.50), "info": (0.05, 0.35)}
REASON_WEIGHTS = (1, 4, 3, 5, 1)  # in the order of cds_service.services.override_reasons.OVERRIDE_REASONS


def main() -> int:
    rng = random.Random(2026)
    data = Path(tempfile.mkdtemp(prefix="nms-cds-report-demo-"))
    app = create_app(Settings(auth="off", environment="development", fixed_now=fixtures.ANCHOR,
                              log_level="WARNING", data_dir=data))
    rt = app.extensions["nms_cds"]
    client = app.test_client()
    scenarios = [s for s in fixtures.load_scenarios() if s.expected.get("indicator")]
    quiet = [s for s in fixtures.load_scenarios() if not s.expected.get("indicator")]
    start = END - timedelta(days=DAYS)
    for day in range(DAYS):
        calls = rng.randint(1, 6) + (3 if day % 7 in (1, 2, 3) else 0)
        for n in range(calls):
            served = start + timedelta(days=day, hours=rng.uniform(7, 20))
            scenario = rng.choice(scenarios if rng.random() < 0.8 or not quiet else quiet)
            body = dict(scenario.request, hookInstance=str(uuid.uuid5(uuid.NAMESPACE_URL, f"demo/{day}/{n}")))
            rt.wall_clock = served.timestamp
            cards = client.post("/cds-services/nms-order-sign", json=body).get_json().get("cards", [])
            for card in cards:
                accept, override = SHARES.get(card["indicator"], (0.0, 0.0))
                roll = rng.random()
                if roll >= accept + override:
                    continue
                answered = served + timedelta(minutes=rng.uniform(1, 20))
                rt.wall_clock = answered.timestamp
                item = {"card": card["uuid"], "outcomeTimestamp": answered.isoformat().replace("+00:00", "Z")}
                if roll < accept:
                    item |= {"outcome": "accepted",
                             "acceptedSuggestions": [{"id": s["uuid"]} for s in card.get("suggestions", [])[:1]]}
                else:
                    code = rng.choices([c for c, _ in OVERRIDE_REASONS], weights=REASON_WEIGHTS)[0]
                    item |= {"outcome": "overridden",
                             "overrideReason": {"reason": {"code": code, "system": OVERRIDE_SYSTEM}}}
                client.post("/cds-services/nms-order-sign/feedback", json={"feedback": [item]})
    since = start.timestamp()
    built = report.build(rt.store.report_rows(since), since=since, now=END.timestamp())
    (REPO / "docs" / "report-example.txt").write_text(report.render_text(built), encoding="utf-8")
    report.render_png(built, REPO / "docs" / "img" / "report-example.png")
    rt.close()
    shutil.rmtree(data, ignore_errors=True)
    print(report.render_text(built))
    return 0


if __name__ == "__main__":
    sys.exit(main())
