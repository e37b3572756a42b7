"""Foreign text made safe for a terminal or a log line: control and format characters shown as escapes.

Client-supplied strings (override reason codes, hook instances, anything a request carried) may hold terminal
escape sequences (``ESC [``, the one-byte ``CSI`` U+009B, OSC title changes) or invisible bidirectional
overrides (U+202E) that rewrite what an operator sees. Every character of Unicode category Cc (C0, DEL, C1
controls) or Cf (format: bidi overrides, zero-width joiners) is replaced by its ``\\xNN`` / ``\\uNNNN`` escape.
"""

from __future__ import annotations

import re
import unicodedata

# A quick pre-check: only strings holding a candidate (ASCII controls, DEL, C1, or any non-ASCII) are walked.
_CANDIDATE = re.compile(r"[\x00-\x1f\x7f-\x9f]|[^\x00-\x7f]")


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` with every control or format character escaped (tabs too; newlines too)."""
    if not _CANDIDATE.search(text):
        return text
    return "".join(_escape(c) if unicodedata.category(c) in ("Cc", "Cf") else c for c in text)
