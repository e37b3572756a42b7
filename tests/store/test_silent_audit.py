"""Silent mode in the store: the whole card is kept (patient references as the audit keeps the patient) in both
backends, and ``nms-cds report`` counts silent cards apart from the cards served."""

from __future__ import annotations

import json
import time

from cds_service import audit, report
from cds_service.store import Store
from tests.helpers.dbservers import postgres  # noqa: F401  (session fixture)
from tests.store.test_store import backend, store, store_settings  # noqa: F401  (fixtures)


def test_silent_cards_keep_the_whole_card_and_the_report_counts_them_apart(store: Store) -> None:  # noqa: F811
    card = {"uuid": "u-silent", "indicator": "warning", "summary": "Possible NMS", "source": {"label": "nms-cds"},
            "suggestions": [{"label": "Order CK", "actions": [{"type": "create", "description": "CK", "resource": {
                "resourceType": "ServiceRequest", "subject": {"reference": "Patient/p1"}}}]}]}
    shown = {**card, "uuid": "u-live", "indicator": "critical"}
    common = {"served_at": time.time(), "hook": "order-sign", "service_id": "nms-order-sign", "hook_instance": "h",
              "score": 20, "rules": ("hyperthermia",), "reasons": (), "evidence": (), "iss": None,
              "patient": "hmac-sha256:abc"}
    store.record_cards(audit.card_records([card], silent=True, patient_id="p1", **common)
                       + audit.card_records([shown], patient_id="p1", **common))
    rows = {row.card_uuid: row for row in store.report_rows(0.0).cards}
    assert (rows["u-live"].mode, rows["u-live"].card) == ("live", None)
    silent = rows["u-silent"]
    kept = json.loads(silent.card or "{}")
    assert silent.mode == "silent" and kept["summary"] == "Possible NMS"
    assert kept["suggestions"][0]["actions"][0]["resource"]["subject"]["reference"] == "Patient/hmac-sha256:abc"
    text = report.render_text(report.build(store.report_rows(0.0), since=0.0, now=time.time()))
    assert "Cards served: 1 " in text and "Silent mode, would have shown (not returned): 1 (warning 1)" in text
