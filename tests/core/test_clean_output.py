"""Clean output: control characters escaped in ``nms-cds report`` and in every log line; the suite-wide secret
guard (tests/helpers/secret_guard.py) notices a configured secret in a log record."""

from __future__ import annotations

import json
import logging
import unicodedata
from pathlib import Path

import pytest
from pydantic import ValidationError

from cds_service import cli
from cds_service.config import Settings
from cds_service.logs import JsonFormatter
from cds_service.printable import printable
from cds_service.report import build, render_text
from cds_service.serve.output import _record
from cds_service.store.base import CardRecord, FeedbackRecord, ReportRows
from tests.conftest import app_for, make_settings
from tests.helpers.secret_guard import GUARD, env_secrets

HOSTILE = "x\x1b[2J\x1b]0;owned\x07\x9b31m\u202edesrever\u200b\x7f\ty"


def raw_controls(text: str) -> list[str]:
    return [hex(ord(c)) for c in text if unicodedata.category(c) in ("Cc", "Cf") and c != "\n"]


def test_printable_escapes_every_control_and_format_character() -> None:
    assert printable("plain text, ünïcode ✓") == "plain text, ünïcode ✓"
    shown = printable(HOSTILE)
    assert raw_controls(shown) == []
    assert shown == "x\\x1b[2J\\x1b]0;owned\\x07\\x9b31m\\u202edesrever\\u200b\\x7f\\x09y"


def test_the_report_prints_client_strings_with_control_characters_escaped() -> None:
    card = CardRecord("u1", 1000.0, "order-sign", "nms-order-sign", "h", "warning", 3, rules=("fever",))
    rows = ReportRows(cards=[card], feedback=[FeedbackRecord("nms-order-sign", "u1", "overridden", "t", 1000.0,
                                                             override_code=HOSTILE)])
    text = render_text(build(rows, since=0.0, now=2000.0))
    assert raw_controls(text) == []
    assert "x\\x1b[2J" in text


def test_log_lines_carry_no_raw_control_character() -> None:
    record = logging.LogRecord("cds_service.http", logging.WARNING, __file__, 1, HOSTILE, None, None)
    record.error = HOSTILE
    line = JsonFormatter().format(record)
    assert raw_controls(line) == [] and json.loads(line)["msg"] == HOSTILE
    funnel_line = _record("warning", "stderr", HOSTILE, where=HOSTILE).decode()
    assert raw_controls(funnel_line.rstrip("\n")) == []


def test_the_secret_guard_notices_a_configured_secret_in_a_log_record() -> None:
    token = "metrics-token-0123456789abcdef"
    with app_for(make_settings(metrics_token=token)) as app:
        assert token in GUARD.secrets
        key = app.extensions["nms_cds"].hash_key.hex()
    logging.getLogger("cds_service.test").info("key %s", key)
    assert GUARD.leaks
    GUARD.leaks.clear()
    logging.getLogger("cds_service.test").error("oops %s", token[:10] + token[10:])
    assert GUARD.leaks and "cds_service.test" in GUARD.leaks[-1]
    GUARD.leaks.clear()  # this test's leak was on purpose
    try:
        raise ValueError(f"bad value {token}")
    except ValueError:
        logging.getLogger("cds_service.test").exception("failed")  # the traceback's message counts too
    assert GUARD.leaks
    GUARD.leaks.clear()


def test_env_secrets_take_url_passwords_and_whole_tokens() -> None:
    env = {"NMS_CDS_DATABASE_URL": "postgresql://u:pg-password-1@db/x", "NMS_CDS_REDIS_URL": "redis://cache:6379/0",
           "NMS_CDS_METRICS_TOKEN": "0123456789abcdef", "NMS_CDS_AUDIT_HASH_KEY": "short"}
    assert env_secrets(env) == {"pg-password-1", "0123456789abcdef"}


def test_a_bad_secret_setting_is_never_repeated_by_report_purge_or_a_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The traceback path that printed the metrics token: `nms-cds report` built Settings() itself, and the
    ValidationError of a too-short NMS_CDS_METRICS_TOKEN repeated the token (pydantic's input_value)."""
    secret = "shortsecret9"
    monkeypatch.setenv("NMS_CDS_METRICS_TOKEN", secret)
    monkeypatch.setenv("NMS_CDS_DATA_DIR", str(tmp_path / "data"))
    for command in (["report"], ["purge"]):
        assert cli.main(command) == 2
        out = capsys.readouterr()
        assert "NMS_CDS_METRICS_TOKEN must be at least 16 characters" in out.err
        assert secret not in out.out + out.err
    with pytest.raises(ValidationError) as raised:
        Settings(metrics_token=secret)
    assert secret not in str(raised.value)
