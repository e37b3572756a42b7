"""Request bytes → JSON: the raw checks (number of values, depth, UTF-8, lone surrogates) at C speed, each a
4xx naming what is wrong, all before ``json.loads`` builds anything: a hostile body (62 levels of nesting, 31 MB
of tiny arrays) is refused in about 0.1 s instead of being decoded and walked for seconds. The size cap is
checked before the bytes are read (:mod:`cds_service.web.guards`); what the JSON must hold is
:mod:`cds_service.protocol.parse`'s.
"""

from __future__ import annotations

import gc
import json
import re
from array import array
from itertools import accumulate
from typing import Any

from cds_service.errors import BadRequest, PayloadTooLarge

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


def check_items(body: bytes, max_items: int) -> None:
    """413 for a body with more than ``max_items`` values, counted as its ``[``, ``{`` and ``,`` bytes (three
    scans at memchr speed, ~10 ms for 31 MB). Those inside strings count too, so the count is an upper bound:
    counting exactly (strings removed) cost seconds on a body of millions of short strings holding commas."""
    items = body.count(b"[") + body.count(b"{") + body.count(b",")
    if items > max_items:
        raise PayloadTooLarge(f"request body holds up to {items} JSON values (arrays, objects, members); "
                              f"at most {max_items}")


def loads_without_gc(body: bytes) -> Any:
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


def load_json(body: bytes, *, max_depth: int, max_items: int | None = None) -> Any:
    if not body.strip():
        raise BadRequest("request body is empty; expected a JSON object")
    if max_items is not None:
        check_items(body, max_items)
    # Fast path: when the C-speed depth is within the limit and the body parses, the body is well-formed
    # JSON, for which that depth equals json_depth(body): the answer is the one the checks below would give.
    # Anything else (too deep, not JSON, not UTF-8) takes the original order of checks and messages.
    fast = _well_formed_depth(body, max_depth)
    if fast is not None and fast <= max_depth:
        try:
            return loads_without_gc(body)
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
    # Each regex only when its pattern's first byte occurs: a one-byte ``in`` runs at memchr speed (8.5 MB:
    # 0.16 ms), a search ~2.8 ms (and a two-byte ``in`` is slower than the search: 8.5 ms).
    hinted = ((b"\\" in body and _SURROGATE_ESCAPE.search(body)) or (b"\xed" in body and _SURROGATE_BYTES.search(body))
              or json.detect_encoding(body) not in ("utf-8", "utf-8-sig"))
    if hinted and _has_lone_surrogate(data):
        raise BadRequest("request body has a string with an unpaired UTF-16 surrogate (\\ud800-\\udfff)")
