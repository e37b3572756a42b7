"""Configuration that explains itself: one line per problem, exit 2, before anything starts (issue 15).

Unit tests read the environment through ``monkeypatch``; the exit codes and the absence of tracebacks are
tested on the real ``nms-cds`` command in subprocesses.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr

from cds_service import cli
from cds_service.app import create_app
from cds_service.auth import TrustedClientsError
from cds_service.config import Settings, parse_size
from cds_service.config_report import (
    OTHER_VARIABLES,
    accepted_form,
    env_name,
    load_settings,
    redact,
    unknown_variables,
)
from cds_service.errors import ConfigError, NmsCdsError
from tests.conftest import REPO

NMS_CDS = str(Path(sys.executable).with_name("nms-cds"))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("NMS_CDS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # the default store (./var) of an app built here lands there, not in the checkout
    yield


def problems(monkeypatch: pytest.MonkeyPatch, **env: str) -> list[str]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    return caught.value.problems


# --- one line per problem ------------------------------------------------------------------------------

@pytest.mark.parametrize(("variable", "value", "problem", "accepted"), [
    ("NMS_CDS_AUTH", "bogus", "not one of the accepted values", "accepted: jwt or off"),
    ("NMS_CDS_HOOK_BUDGET_SECONDS", "abc", "not a number", "accepted: a number of seconds > 0"),
    ("NMS_CDS_HOOK_BUDGET_SECONDS", "0", "too small", "> 0"),
    ("NMS_CDS_MAX_BODY_BYTES", "32 parsecs", "not a size", "'32 MiB'"),
    ("NMS_CDS_MAX_BODY_BYTES", "100", "too small", ">= 1024"),
    ("NMS_CDS_FIXED_NOW", "yesterday", "not a date-time", "ISO 8601"),
    ("NMS_CDS_LOG_LEVEL", "verbose", "not one of the accepted values", "DEBUG, INFO, WARNING, ERROR or CRITICAL"),
    ("NMS_CDS_ENVIRONMENT", "staging", "not one of the accepted values", "production or development"),
    ("NMS_CDS_JWT_LEEWAY_SECONDS", "999", "too large", "<= 300"),
    ("NMS_CDS_FHIR_MAX_PAGES", "ten", "not a whole number", ">= 1"),
    ("NMS_CDS_LOG_PATIENT_IDS", "perhaps", "not a yes/no value", "true or false"),
    ("NMS_CDS_SERVICE_ID", "a b", "characters that are not allowed", "text matching"),
])
def test_each_bad_value_is_one_line_naming_variable_problem_and_form(
        monkeypatch: pytest.MonkeyPatch, variable: str, value: str, problem: str, accepted: str) -> None:
    [line] = problems(monkeypatch, **{variable: value})
    assert line.startswith(f"{variable}={value!r}: ")
    assert problem in line and accepted in line
    assert "\n" not in line and "pydantic" not in line and "http" not in line.split(":", 1)[1][:40]


def test_several_problems_give_one_line_each(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = problems(monkeypatch, NMS_CDS_AUTH="bogus", NMS_CDS_HOOK_BUDGET_SECONDS="abc",
                     NMS_CDS_LOG_LEVEL="verbose")
    assert [line.split("=", 1)[0] for line in lines] == [
        "NMS_CDS_AUTH", "NMS_CDS_HOOK_BUDGET_SECONDS", "NMS_CDS_LOG_LEVEL"]


def test_cors_wildcard_in_production_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    [line] = problems(monkeypatch, NMS_CDS_CORS_ORIGINS="*")
    assert line.startswith("NMS_CDS_CORS_ORIGINS='*' is for development only")
    assert "accepted in production: a comma-separated list of origins" in line
    monkeypatch.setenv("NMS_CDS_ENVIRONMENT", "development")
    assert load_settings().cors_origins == ["*"]


@pytest.mark.parametrize(("text", "size"), [
    ("33554432", 33554432), ("32MiB", 32 * 1024**2), ("32 MiB", 32 * 1024**2), ("32 mib", 32 * 1024**2),
    ("20MB", 20_000_000), ("1.5 GiB", 1536 * 1024**2), ("64 KiB", 65536), ("2048 B", 2048), ("8 kB", 8000),
])
def test_sizes_accept_human_units(monkeypatch: pytest.MonkeyPatch, text: str, size: int) -> None:
    monkeypatch.setenv("NMS_CDS_MAX_BODY_BYTES", text)
    monkeypatch.setenv("NMS_CDS_FHIR_MAX_RESPONSE_BYTES", text)
    settings = load_settings()
    assert settings.max_body_bytes == size and settings.fhir_max_response_bytes == size


@pytest.mark.parametrize("text", ["", "MiB", "32 MiBs", "1.3 B", "-5", "32 Mb/s"])
def test_unusable_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a"):
        parse_size(text)


def test_values_are_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NMS_CDS_LOG_LEVEL", "warning")
    monkeypatch.setenv("NMS_CDS_ENVIRONMENT", "Dev")
    monkeypatch.setenv("NMS_CDS_FIXED_NOW", "2026-11-24T12:00:00Z")
    settings = load_settings()
    assert settings.log_level == "WARNING" and settings.is_development
    assert settings.fixed_now == datetime(2026, 11, 24, 12, tzinfo=UTC)


def test_every_setting_has_an_accepted_form_in_the_configuration_doc() -> None:
    readme = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    for field in Settings.model_fields:
        assert accepted_form(field)
        assert f"| `{env_name(field)}` |" in readme, f"{env_name(field)} missing from docs/configuration.md's table"


# --- unknown variables, fixed clock, secrets ----------------------------------------------------------------

def test_unknown_variables_name_the_closest_setting() -> None:
    notes = unknown_variables({"NMS_CDS_AUTHH": "off", "NMS_CDS_HOOK_BUDGET": "3", "NMS_CDS_ZZZ": "1",
                               "NMS_CDS_AUTH": "off", "NMS_CDS_PORT": "9090", "HOME": "/root"})
    assert notes == [
        "NMS_CDS_AUTHH is not a setting of nms-cds and is ignored; did you mean NMS_CDS_AUTH?",
        "NMS_CDS_HOOK_BUDGET is not a setting of nms-cds and is ignored; did you mean NMS_CDS_HOOK_BUDGET_SECONDS?",
        "NMS_CDS_ZZZ is not a setting of nms-cds and is ignored; see docs/configuration.md",
    ]
    assert all(name not in {env_name(f) for f in Settings.model_fields} for name in OTHER_VARIABLES)


def test_fixed_now_in_production_is_logged_loudly(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(environment="production", auth="off", fixed_now=datetime(2026, 11, 24, tzinfo=UTC))
    assert settings.warnings() and "pins the clinical clock in production" in settings.warnings()[0]
    assert not Settings(environment="development", fixed_now=datetime(2026, 11, 24, tzinfo=UTC)).warnings()
    with caplog.at_level(logging.WARNING, logger="cds_service"):
        app = create_app(settings)
    app.extensions["nms_cds"].close()
    assert any(getattr(r, "event", None) == "config-warning" and "NMS_CDS_FIXED_NOW" in r.getMessage()
               for r in caplog.records)


def test_redaction() -> None:
    assert redact("store_url", "postgresql://cds:s3cret@db.example/cds") == "postgresql://cds:***@db.example/cds"
    assert redact("client_secret", "abc") == "***"
    assert redact("fhir_allowlist", ["https://a.example", "https://b.example"]) == "https://a.example,https://b.example"
    assert redact("fixed_now", None) == ""
    assert redact("database_url", SecretStr("postgresql://cds:pw@db:5432/cds")) == "postgresql://cds:***@db:5432/cds"
    assert redact("redis_url", SecretStr("redis://:pw@cache:6379/0")) == "redis://:***@cache:6379/0"
    assert redact("audit_hash_key", SecretStr("k3y")) == "***"


def test_check_config_never_prints_a_secret(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NMS_CDS_AUTH", "off")
    monkeypatch.setenv("NMS_CDS_DATABASE_URL", "postgresql://cds:hunter2@db.example:5432/cds")
    monkeypatch.setenv("NMS_CDS_AUDIT_HASH_KEY", "hunter3")
    cli.main(["check-config"])
    out = capsys.readouterr().out
    assert "hunter" not in out and "postgresql://cds:***@db.example:5432/cds" in out


# --- create_app users -------------------------------------------------------------------------------------------

def test_create_app_from_the_environment_raises_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NMS_CDS_AUTH", "bogus")
    with pytest.raises(ConfigError, match=r"^NMS_CDS_AUTH='bogus': ") as caught:
        create_app()
    assert isinstance(caught.value, NmsCdsError)
    assert issubclass(TrustedClientsError, ConfigError)


def test_create_app_without_trusted_clients_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NMS_CDS_AUTH", "jwt")
    with pytest.raises(ConfigError, match="NMS_CDS_AUTH=jwt needs NMS_CDS_TRUSTED_CLIENTS"):
        create_app()


# --- check-config ----------------------------------------------------------------------------------------------

def test_check_config_prints_the_effective_configuration(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NMS_CDS_AUTH", "off")
    monkeypatch.setenv("NMS_CDS_MAX_BODY_BYTES", "8 MiB")
    monkeypatch.setenv("NMS_CDS_AUTHH", "x")
    assert cli.main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert "NMS_CDS_MAX_BODY_BYTES" in out and "8388608  [environment]" in out
    assert "NMS_CDS_HOOK_BUDGET_SECONDS" in out and "3.0  [default]" in out
    assert "problems: 0" in out and "did you mean NMS_CDS_AUTH?" in out and "NMS_CDS_AUTH=off" in out


def test_check_config_reports_problems_and_exits_2(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NMS_CDS_AUTH", "off")
    monkeypatch.setenv("NMS_CDS_HOOK_BUDGET_SECONDS", "abc")
    assert cli.main(["check-config", "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["problems"] == ["NMS_CDS_HOOK_BUDGET_SECONDS='abc': not a number; accepted: a number of seconds > 0"]
    rows = {row["variable"]: row for row in report["settings"]}
    assert rows["NMS_CDS_HOOK_BUDGET_SECONDS"] == {"variable": "NMS_CDS_HOOK_BUDGET_SECONDS", "value": "3.0",
                                                   "source": "environment", "valid": False}
    assert rows["NMS_CDS_AUTH"] == {"variable": "NMS_CDS_AUTH", "value": "off", "source": "environment",
                                    "valid": True}
    assert rows["NMS_CDS_LOG_LEVEL"]["source"] == "default"


def test_check_config_marks_a_cross_setting_problem(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NMS_CDS_AUTH", "off")
    monkeypatch.setenv("NMS_CDS_CORS_ORIGINS", "*")
    assert cli.main(["check-config"]) == 2
    out = capsys.readouterr().out
    assert "NMS_CDS_CORS_ORIGINS                          INVALID, the default would be: (unset)" in out
    assert "problems: 1\n  NMS_CDS_CORS_ORIGINS='*' is for development only" in out


def test_check_config_checks_the_trusted_clients_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NMS_CDS_TRUSTED_CLIENTS", str(tmp_path / "missing.json"))
    assert cli.main(["check-config"]) == 2
    assert "missing.json does not exist" in capsys.readouterr().out


# --- the real command: exit 2, one line each, nothing started -------------------------------------------------

def run(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("NMS_CDS_")}
    return subprocess.run([NMS_CDS, *args], env={**base, **env}, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


BAD = [
    ({"NMS_CDS_AUTH": "bogus"}, "NMS_CDS_AUTH='bogus': not one of the accepted values; accepted: jwt or off"),
    ({"NMS_CDS_HOOK_BUDGET_SECONDS": "abc"}, "NMS_CDS_HOOK_BUDGET_SECONDS='abc': not a number"),
    ({"NMS_CDS_MAX_BODY_BYTES": "32 parsecs"}, "NMS_CDS_MAX_BODY_BYTES='32 parsecs': not a size"),
    ({"NMS_CDS_FIXED_NOW": "yesterday"}, "NMS_CDS_FIXED_NOW='yesterday': not a date-time"),
    ({"NMS_CDS_LOG_LEVEL": "verbose"}, "NMS_CDS_LOG_LEVEL='verbose': not one of the accepted values"),
]


CASES = [("serve", env, line) for env, line in BAD] + [("dev", env, line) for env, line in BAD] + [
    ("serve", {"NMS_CDS_CORS_ORIGINS": "*"}, "NMS_CDS_CORS_ORIGINS='*'"),  # dev always runs in development
]


@pytest.mark.parametrize(("command", "env", "line"), CASES)
def test_bad_configuration_exits_2_with_one_line(command: str, env: dict[str, str], line: str) -> None:
    result = run([command, "--port", "0"], {"NMS_CDS_AUTH": "off", **env} if "NMS_CDS_AUTH" not in env else env)
    assert result.returncode == 2, result.stderr
    [only] = result.stderr.splitlines()
    assert only.startswith(f"nms-cds: {line}") and "; accepted" in only
    assert result.stdout == ""


def test_serve_reports_unknown_variables_and_bad_values_together() -> None:
    result = run(["serve", "--port", "0"], {"NMS_CDS_AUTHH": "off", "NMS_CDS_AUTH": "bogus"})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "nms-cds: warning: NMS_CDS_AUTHH is not a setting of nms-cds and is ignored; did you mean NMS_CDS_AUTH?",
        "nms-cds: NMS_CDS_AUTH='bogus': not one of the accepted values; accepted: jwt or off",
    ]


def test_check_config_command_exit_codes(tmp_path: Path) -> None:
    ok = run(["check-config"], {"NMS_CDS_AUTH": "off", "NMS_CDS_MAX_BODY_BYTES": "32 MiB"})
    assert ok.returncode == 0 and "33554432" in ok.stdout
    bad = run(["check-config"], {"NMS_CDS_AUTH": "off", "NMS_CDS_LOG_LEVEL": "verbose"})
    assert bad.returncode == 2 and "problems: 1" in bad.stdout and "Traceback" not in bad.stderr


def test_serve_bad_port_variable_is_one_line() -> None:
    result = run(["serve"], {"NMS_CDS_AUTH": "off", "NMS_CDS_PORT": "http"})
    assert result.returncode == 2
    assert result.stderr.strip() == "nms-cds: NMS_CDS_PORT='http': not a port; accepted: a whole number from 1 to 65535"
