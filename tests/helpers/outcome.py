"""Checks for the service's one error shape, a FHIR R4 OperationOutcome (cds_service/protocol/outcome.py)."""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.operationoutcome import OperationOutcome

#: A 401 answer: no detail on purpose.
UNAUTHORIZED = {"resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "security", "diagnostics": "unauthorized"}]}


def valid_outcome(body: Any) -> OperationOutcome:
    """``body`` parsed by the FHIR R4B model (raises when it is not a valid OperationOutcome)."""
    assert isinstance(body, dict) and body.get("resourceType") == "OperationOutcome", body
    return OperationOutcome.model_validate(body)


def issue(body: Any) -> dict[str, Any]:
    """The first issue of a valid OperationOutcome, plus ``field``: its first ``expression`` (or None)."""
    valid_outcome(body)
    first: dict[str, Any] = dict(body["issue"][0])
    first["field"] = (first.get("expression") or [None])[0]
    return first
