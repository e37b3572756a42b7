"""Read and validate a CDS Hooks 2.0 service request body.

Strict where the spec is (REQUIRED fields and their types → 400 naming the field), lenient where real
clients deviate (no ``Bundle.type``, unknown ``extension`` members, extra context fields).
"""

from __future__ import annotations

import gc
import json
import re
from array import array
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from cds_service.errors import BadRequest

FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
REFERENCE = re.compile(r"^[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64}$")  # a relative reference "Type/id"
# Context members each hook REQUIRES beyond userId and patientId (CDS Hooks hook library, R4 definitions).
# Members a hook does not define (draftOrders sent with patient-view) are ignored, like unknown extensions.
HOOK_CONTEXTS: dict[str, tuple[str, ...]] = {
    "patient-view": (),
    "order-select": ("selections", "draftOrders"),
    "order-sign": ("draftOrders",),
}
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]{1,8192}")
# A UTF-16 surrogate as a JSON escape (\ud800-\udfff) or as the raw bytes json.loads decodes with surrogatepass.
# Two patterns, each with a literal first byte, so that re scans for it at C speed (one alternation of both
# ran ~8x slower: 37 ms instead of 5 ms on an 8.5 MB prefetch).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE_BYTES = re.compile(rb"\xed[\xa0-\xbf]")
# A string runs to its closing quote or, unterminated, to the end of the body: without the ``\Z`` branch an
# unterminated string of escaped quotes made re.sub rescan from every quote (quadratic: 64 KB took 12 s).
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_DEPTH_TABLE = bytes(
    1 if c in b"[{" else 255 if c in b"]}" else 0 for c in range(256)
)


def json_depth(body: bytes) -> int:
    """Deepest nesting of a JSON text, computed at C speed (strings removed first)."""
    skeleton = _STRINGS.sub(b"", body).translate(_DEPTH_TABLE).replace(b"\x00", b"")
    if not skeleton:
        return 0
    return max(accumulate(array("b", skeleton)))


# Everything but quotes and brackets, deleted by bytes.translate; then {} folded onto [].
_NOT_SKELETON = bytes(c for c in range(256) if c not in b'"[]{}')
_FOLD_BRACES = bytes.maketrans(b"{}", b"[]")
_QUOTED = re.compile(rb'"[^"]*"')


def _well_formed_depth(body: bytes, limit: int) -> int | None:
    """Nesting depth of ``body`` *if it is well-formed UTF-8 JSON*, at C speed; ``limit + 1`` means deeper.

    Every step is a bytes method: escaped backslashes then escaped quotes are removed (so each remaining
    quote delimits a string), everything but quotes and brackets is deleted, adjacent quote pairs are
    dropped (an empty string, or the empty gap between two strings), what is left inside quotes is removed,
    and then innermost ``[]`` pairs are peeled off one level per pass. For a body that is not well-formed JSON
    the number means nothing, which is why :func:`load_json` trusts it only when ``json.loads`` then succeeds.
    ``None``: not UTF-8 (``json.loads`` would decode UTF-16/32), or unbalanced.
    """
    if json.detect_encoding(body) not in ("utf-8", "utf-8-sig"):
        return None
    skeleton = body
    if b"\\" in skeleton:
        skeleton = skeleton.replace(b"\\\\", b"").replace(b'\\"', b"")
    skeleton = skeleton.translate(None, _NOT_SKELETON)
    skeleton = skeleton.replace(b'""', b"")
    if b'"' in skeleton:
        skeleton = _QUOTED.sub(b"", skeleton)
    skeleton = skeleton.translate(_FOLD_BRACES)
    depth = 0
    while skeleton:
        if depth > limit:
            return depth
        peeled = skeleton.replace(b"[]", b"")
        if len(peeled) == len(skeleton):
            return None
        skeleton = peeled
        depth += 1
    return depth


def _loads_without_gc(body: bytes) -> Any:
    """``json.loads`` with the cyclic garbage collector paused.

    Decoding only builds new acyclic containers, so a collection during it cannot free anything; it only
    walks the growing tree again and again (on a 10,000-Observation prefetch that doubled the parse time).
    Reference counting is unaffected; the collector is re-enabled afterwards unless it was off already.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return json.loads(body)
    finally:
        if enabled:
            gc.enable()


def load_json(body: bytes, *, max_depth: int) -> Any:
    if not body.strip():
        raise BadRequest("request body is empty; expected a JSON object")
    # Fast path: when the C-speed depth is within the limit and the body parses, the body is well-formed
    # JSON, for which that depth equals json_depth(body): the answer is the one the checks below would give.
    # Anything else (too deep, not JSON, not UTF-8) takes the original order of checks and messages.
    fast = _well_formed_depth(body, max_depth)
    if fast is not None and fast <= max_depth:
        try:
            return _loads_without_gc(body)
        except (ValueError, RecursionError):  # ValueError: also a number of more than 4300 digits
            pass
    if json_depth(body) > max_depth:
        raise BadRequest(f"JSON nesting deeper than {max_depth} levels")
    try:
        return json.loads(body)
    except UnicodeDecodeError as exc:
        raise BadRequest("request body is not UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except RecursionError as exc:  # pragma: no cover - depth check comes first
        raise BadRequest("JSON nesting too deep") from exc
    except ValueError as exc:  # Python refuses integers of more than sys.get_int_max_str_digits() digits
        raise BadRequest("request body has a JSON number too long to read (more than 4300 digits)") from exc


def _require(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str = "") -> Any:
    path = f"{where}{name}"
    if name not in obj or obj[name] is None:
        raise BadRequest(f"missing required field '{path}'", field=path)
    value = obj[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        expected = {"str": "a string", "dict": "an object", "list": "an array"}.get(expected, expected)
        raise BadRequest(f"field '{path}' must be {expected}", field=path)
    if isinstance(value, str) and not value.strip():
        raise BadRequest(f"field '{path}' must not be empty", field=path)
    return value


@dataclass(frozen=True)
class HookRequest:
    hook: str
    hook_instance: str
    context: dict[str, Any]
    patient_id: str
    user_id: str
    encounter_id: str | None
    draft_orders: dict[str, Any]
    fhir_server: str | None
    access_token: str | None
    prefetch: dict[str, Any] | None
    selections: tuple[str, ...] = ()  # order-select: "MedicationRequest/<id>" of the orders being picked

    def draft_resources(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for entry in self.draft_orders.get("entry") or []:
            if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                out.append(entry["resource"])
        return out


def parse_hook_request(body: Any, *, expected_hook: str) -> HookRequest:
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    hook = _require(body, "hook", str)
    if hook != expected_hook:
        raise BadRequest(f"hook '{hook[:40]}' is not served here; this service handles '{expected_hook}'",
                         field="hook")
    hook_instance = _require(body, "hookInstance", str)
    if len(hook_instance) > 128:
        raise BadRequest("field 'hookInstance' is longer than 128 characters", field="hookInstance")
    context = _require(body, "context", dict)
    patient_id = _require(context, "patientId", str, "context.")
    if not FHIR_ID.fullmatch(patient_id):  # fullmatch: '$' would let a trailing newline through
        raise BadRequest("field 'context.patientId' is not a valid FHIR id", field="context.patientId")
    user_id = _require(context, "userId", str, "context.")
    encounter_id = context.get("encounterId")
    if encounter_id is not None and not (isinstance(encounter_id, str) and FHIR_ID.fullmatch(encounter_id)):
        raise BadRequest("field 'context.encounterId' is not a valid FHIR id", field="context.encounterId")
    rules = HOOK_CONTEXTS.get(hook, ())
    draft_orders: dict[str, Any] = {}
    if "draftOrders" in rules:
        draft_orders = _require(context, "draftOrders", dict, "context.")
        if draft_orders.get("resourceType", "Bundle") != "Bundle":
            raise BadRequest("field 'context.draftOrders' must be a FHIR Bundle", field="context.draftOrders")
        entries = draft_orders.get("entry")
        if entries is not None and not isinstance(entries, list):
            raise BadRequest("field 'context.draftOrders.entry' must be an array",
                             field="context.draftOrders.entry")
    selections: tuple[str, ...] = ()
    if "selections" in rules:
        chosen = _require(context, "selections", list, "context.")
        if not chosen:
            raise BadRequest("field 'context.selections' must not be empty", field="context.selections")
        for i, ref in enumerate(chosen):
            if not (isinstance(ref, str) and REFERENCE.fullmatch(ref)):
                raise BadRequest(f"field 'context.selections[{i}]' must be a reference 'Type/id'",
                                 field=f"context.selections[{i}]")
        selections = tuple(chosen)

    fhir_server = body.get("fhirServer")
    if fhir_server is not None and (not isinstance(fhir_server, str) or not fhir_server.strip()):
        raise BadRequest("field 'fhirServer' must be a URL string", field="fhirServer")
    access_token = None
    auth = body.get("fhirAuthorization")
    if auth is not None:
        if not isinstance(auth, dict):
            raise BadRequest("field 'fhirAuthorization' must be an object", field="fhirAuthorization")
        if fhir_server is None:
            raise BadRequest("'fhirAuthorization' requires 'fhirServer' (cds-r-1)", field="fhirServer")
        access_token = _require(auth, "access_token", str, "fhirAuthorization.")
        if not _TOKEN_CHARS.fullmatch(access_token):  # it goes into an HTTP header: printable ASCII only
            raise BadRequest("field 'fhirAuthorization.access_token' must be printable ASCII without spaces "
                             "(an RFC 6750 bearer token)", field="fhirAuthorization.access_token")
        token_type = auth.get("token_type", "Bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise BadRequest("field 'fhirAuthorization.token_type' must be 'Bearer'",
                             field="fhirAuthorization.token_type")
    prefetch = body.get("prefetch")
    if prefetch is not None and not isinstance(prefetch, dict):
        raise BadRequest("field 'prefetch' must be an object", field="prefetch")
    return HookRequest(
        hook=hook,
        hook_instance=hook_instance,
        context=context,
        patient_id=patient_id,
        user_id=user_id,
        encounter_id=encounter_id,
        draft_orders=draft_orders,
        selections=selections,
        fhir_server=fhir_server.strip() if isinstance(fhir_server, str) else None,
        access_token=access_token,
        prefetch=prefetch,
    )


_OUTCOMES = {"accepted", "overridden"}


def parse_feedback(body: Any) -> list[dict[str, Any]]:
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    items = _require(body, "feedback", list)
    if not items:
        raise BadRequest("field 'feedback' must not be empty", field="feedback")
    out = []
    for i, item in enumerate(items):
        where = f"feedback[{i}]."
        if not isinstance(item, dict):
            raise BadRequest(f"field 'feedback[{i}]' must be an object", field=f"feedback[{i}]")
        card = _require(item, "card", str, where)
        outcome = _require(item, "outcome", str, where)
        if outcome not in _OUTCOMES:
            raise BadRequest(f"field '{where}outcome' must be 'accepted' or 'overridden'", field=f"{where}outcome")
        timestamp = _require(item, "outcomeTimestamp", str, where)
        accepted = item.get("acceptedSuggestions")
        if outcome == "accepted":
            accepted = _require(item, "acceptedSuggestions", list, where)
        if accepted is not None:  # checked whenever present: an overridden card may carry it too
            if not isinstance(accepted, list):
                raise BadRequest(f"field '{where}acceptedSuggestions' must be an array",
                                 field=f"{where}acceptedSuggestions")
            for j, suggestion in enumerate(accepted):
                if not isinstance(suggestion, dict) or not isinstance(suggestion.get("id"), str):
                    raise BadRequest(f"field '{where}acceptedSuggestions[{j}].id' must be a string",
                                     field=f"{where}acceptedSuggestions[{j}].id")
        reason = item.get("overrideReason")
        if reason is not None and not isinstance(reason, dict):
            raise BadRequest(f"field '{where}overrideReason' must be an object", field=f"{where}overrideReason")
        out.append({"card": card, "outcome": outcome, "outcomeTimestamp": timestamp,
                    "acceptedSuggestions": [s["id"] for s in accepted or []],
                    "overrideReason": (reason or {}).get("reason")})
    return out


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def reject_lone_surrogates(body: bytes, data: Any) -> None:
    """400 for a string holding an unpaired UTF-16 surrogate (``"\\ud800"``): not text, cannot be answered in
    UTF-8 (RFC 8259 section 8.2). The parsed value is walked only when the raw body hints at one."""
    hinted = (_SURROGATE_ESCAPE.search(body) or _SURROGATE_BYTES.search(body)
              or json.detect_encoding(body) not in ("utf-8", "utf-8-sig"))
    if hinted and _has_lone_surrogate(data):
        raise BadRequest("request body has a string with an unpaired UTF-16 surrogate (\\ud800-\\udfff)")
