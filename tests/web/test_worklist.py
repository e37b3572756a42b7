"""``/worklist``: the surveillance worklist over HTTP (token, listing, state changes, escaping)."""

from __future__ import annotations

import time

from cds_service.store.worklist import Worklist
from tests.conftest import app_for, make_settings

TOKEN = "worklist-token-0123456789"


def _add(worklist: Worklist, patient: str, summary: str = "Possible NMS: haloperidol, T 39.4 °C") -> int:
    entry_id = worklist.add(patient=patient, patient_ref=f"Patient/{patient}", finding_key="critical|t0",
                            indicator="critical", summary=summary, card_uuid="u-" + patient,
                            evidence=["MedicationRequest/m1"], criteria_met_at=None, now=time.time())
    assert entry_id is not None
    return entry_id


def test_the_token_guards_the_worklist() -> None:
    with app_for(make_settings(worklist_token=TOKEN)) as app:
        client = app.test_client()
        assert client.get("/worklist").status_code == 401
        assert client.get("/worklist", headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
        ok = client.get("/worklist", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and ok.get_json() == {"entries": []}


def test_listing_and_state_changes() -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with app_for(make_settings(worklist_token=TOKEN)) as app:
        worklist = Worklist(app.extensions["nms_cds"].store)
        first = _add(worklist, "p1")
        _add(worklist, "p2", summary="<script>alert(1)</script>")
        client = app.test_client()
        listed = client.get("/worklist", headers=auth).get_json()["entries"]
        assert [e["patient"] for e in listed] == ["Patient/p1", "Patient/p2"]
        assert client.post(f"/worklist/{first}", json={"state": "dismissed"}, headers=auth).status_code == 400
        assert client.post(f"/worklist/{first}", json={"state": "dismissed", "reason": "seen at the bedside"},
                           headers=auth).status_code == 200
        assert client.post("/worklist/999", json={"state": "seen"}, headers=auth).status_code == 404
        assert client.post(f"/worklist/{first}", json={"state": "bogus"}, headers=auth).status_code == 400
        assert [e["patient"] for e in client.get("/worklist", headers=auth).get_json()["entries"]] == ["Patient/p2"]
        dismissed = client.get("/worklist?state=dismissed", headers=auth).get_json()["entries"]
        assert dismissed[0]["reason"] == "seen at the bedside"
        page = client.get("/worklist", headers={**auth, "Accept": "text/html"})
        assert page.content_type.startswith("text/html")
        text = page.get_data(as_text=True)
        assert "<script>alert" not in text and "&lt;script&gt;" in text
        assert client.get("/worklist?state=nope", headers=auth).status_code == 400
