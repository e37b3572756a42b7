"""The one error shape of the service: a FHIR R4 OperationOutcome (CDS Hooks 3.0 ballot, "Error handling").

Every 4xx/5xx answer, from the Flask routes, gunicorn's own error page and the nginx front's error pages, is
built here: ``{"resourceType": "OperationOutcome", "issue": [{"severity", "code", "diagnostics",
"expression"?}]}``. ``code`` is from the FHIR IssueType value set (http://hl7.org/fhir/R4/valueset-issue-type.html);
``diagnostics`` is the message (safe to return: no token, no patient data); ``expression`` names the offending
request member where there is one. Plain data only, so the serving layer can use it without Flask.
"""

from __future__ import annotations

from typing import Any, Literal

Severity = Literal["fatal", "error", "warning", "information"]

#: HTTP status → FHIR IssueType code, where a handler does not name a more precise one.
ISSUE_TYPE_BY_STATUS: dict[int, str] = {
    400: "invalid", 401: "security", 403: "forbidden", 404: "not-found", 405: "not-supported", 408: "timeout",
    411: "invalid", 412: "processing", 413: "too-costly", 414: "too-long", 415: "not-supported", 417: "invalid",
    429: "throttled", 431: "too-long", 500: "exception", 501: "not-supported", 502: "transient",
    503: "transient", 504: "timeout",
}


def issue_type(status: int) -> str:
    """The IssueType code for an HTTP status (``exception`` for a 5xx, ``invalid`` for a 4xx not listed)."""
    return ISSUE_TYPE_BY_STATUS.get(status, "exception" if status >= 500 else "invalid")


def operation_outcome(status: int, diagnostics: str, *, code: str | None = None,
                      expression: str | None = None, severity: Severity = "error") -> dict[str, Any]:
    """The OperationOutcome body of an error answer with HTTP ``status``."""
    issue: dict[str, Any] = {"severity": severity, "code": code or issue_type(status), "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def outcome_issues(status: int, problems: list[str], *, code: str | None = None) -> dict[str, Any]:
    """An OperationOutcome with one issue per problem (``/readyz`` lists every reason it is not ready)."""
    issues = [{"severity": "error", "code": code or issue_type(status), "diagnostics": p} for p in problems]
    return {"resourceType": "OperationOutcome", "issue": issues}
