"""What the configuration says, in lines an operator reads: one line per problem, the ``check-config`` table.

:func:`load_settings` is the one way the command line and ``create_app()`` read the environment: every
invalid value becomes one line naming the variable, the value's problem and the accepted form, raised as
:class:`cds_service.errors.ConfigError` (the command line prints the lines and exits 2). :func:`unknown_variables`
names ``NMS_CDS_*`` variables that are no setting, with the closest known one; :func:`collect` is what
``nms-cds check-config`` prints (:func:`table`), secrets redacted.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import annotated_types
from pydantic import SecretStr, ValidationError
from pydantic.fields import FieldInfo

from cds_service.config import ENV_PREFIX, AuthMode, Settings
from cds_service.errors import ConfigError

#: ``NMS_CDS_*`` variables that are not service settings (command line, tests, benchmarks); never reported unknown.
OTHER_VARIABLES: dict[str, str] = {
    "NMS_CDS_PORT": "default port of `nms-cds serve` and `nms-cds healthcheck` (the container sets it)",
    "NMS_CDS_FUZZ_EXAMPLES": "make fuzz: number of hypothesis examples",
    "NMS_CDS_FUZZ_RANDOM": "make fuzz: random seed switch",
    "NMS_CDS_BENCH_FLOOR_BODY": "make bench: body size of the bare Flask floor",
}

_SECRET_NAME = re.compile(r"password|secret|token|private|key", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*):[^@/\s]+@")


def env_name(field: str) -> str:
    """The variable a setting is read from: ``NMS_CDS_<FIELD>``, or its alias (``REQUESTS_CA_BUNDLE``)."""
    info = Settings.model_fields.get(field)
    alias = info.validation_alias if info is not None else None
    return alias if isinstance(alias, str) else ENV_PREFIX + field.upper()


def _field_of(location: object) -> str | None:
    """The setting an error location names (pydantic reports an aliased field by its alias)."""
    for field, info in Settings.model_fields.items():
        if location in (field, info.validation_alias):
            return field
    return None


def redact(field: str, value: object) -> str:
    """Printable form of a setting's value: secrets replaced by ``***``, URL passwords removed."""
    if value is None:
        return ""
    if isinstance(value, SecretStr):  # a URL keeps all but its password; any other secret is hidden whole
        secret = value.get_secret_value()
        return _URL_PASSWORD.sub(r"\1:***@", secret) if "://" in secret and not _SECRET_NAME.search(field) else "***"
    if isinstance(value, list | tuple):
        text = ",".join(str(v) for v in value)
    elif isinstance(value, Enum):
        text = str(value.value)
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, datetime):
        text = value.isoformat()
    else:
        text = str(value)
    if _SECRET_NAME.search(field) and text:
        return "***"
    return _URL_PASSWORD.sub(r"\1:***@", text)


def _plain(annotation: Any) -> Any:
    """The type inside ``X | None``, ``Annotated[X, ...]``."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin is not None and type(None) in get_args(annotation):
            annotation = next(a for a in get_args(annotation) if a is not type(None))
        else:
            return annotation


def _alternatives(values: list[str]) -> str:
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " or " + values[-1]


def _bounds(info: FieldInfo) -> str:
    parts = []
    for item in info.metadata:
        if isinstance(item, annotated_types.Ge):
            parts.append(f">= {item.ge}")
        elif isinstance(item, annotated_types.Gt):
            parts.append(f"> {item.gt}")
        elif isinstance(item, annotated_types.Le):
            parts.append(f"<= {item.le}")
        elif isinstance(item, annotated_types.Lt):
            parts.append(f"< {item.lt}")
    return " and ".join(parts)


def accepted_form(field: str) -> str:
    """What a setting accepts, in words (docs/configuration.md and error lines)."""
    info = Settings.model_fields[field]
    extra = info.json_schema_extra
    bounds = _bounds(info)
    if isinstance(extra, dict) and isinstance(extra.get("form"), str):
        return str(extra["form"]) + (f"; {bounds}" if bounds else "")
    kind = _plain(info.annotation)
    unit = " of seconds" if field.endswith(("_seconds", "_timeout")) else ""
    if isinstance(kind, type) and issubclass(kind, Enum):
        return _alternatives([str(m.value) for m in kind])
    if get_origin(kind) is Literal:
        return _alternatives([str(a) for a in get_args(kind)])
    if kind is bool:
        return "true or false"
    if kind is int:
        return f"a whole number{unit}" + (f" {bounds}" if bounds else "")
    if kind is float:
        return f"a number{unit}" + (f" {bounds}" if bounds else "")
    if kind is Path:
        return "a file path"
    if kind is SecretStr:
        return "a URL (its password is never shown)" if field.endswith("_url") else "text (never shown)"
    if get_origin(kind) is list:
        return "a comma-separated list"
    if kind is str:
        pattern = next((m.pattern for m in info.metadata if hasattr(m, "pattern")), None)
        return f"text matching {pattern}" if pattern else "text"
    return str(getattr(kind, "__name__", kind))


_PROBLEMS = {
    "float_parsing": "not a number", "float_type": "not a number",
    "int_parsing": "not a whole number", "int_from_float": "not a whole number", "int_type": "not a whole number",
    "bool_parsing": "not a yes/no value", "enum": "not one of the accepted values",
    "literal_error": "not one of the accepted values", "datetime_from_date_parsing": "not a date-time",
    "datetime_parsing": "not a date-time", "datetime_type": "not a date-time",
    "string_pattern_mismatch": "has characters that are not allowed",
    "greater_than_equal": "too small", "greater_than": "too small", "less_than_equal": "too large",
    "less_than": "too large", "finite_number": "not a finite number",
}


def _problem(error: Mapping[str, Any]) -> str:
    kind = str(error.get("type", ""))
    if kind in _PROBLEMS:
        return _PROBLEMS[kind]
    message = str(error.get("msg", "invalid"))
    return message.removeprefix("Value error, ").rstrip(".")


def _line(error: Mapping[str, Any], given: Mapping[str, object]) -> str:
    loc = error.get("loc") or ()
    field = _field_of(loc[0]) if loc else None
    if field is None:  # a check across settings: its message names the variables
        return _problem(error)
    problem = _problem(error)
    if problem.startswith(env_name(field)):  # the validator's message already names variable, value and form
        return problem
    raw = redact(field, given.get(field, error.get("input")))  # the value as written, before normalising
    shown = raw if len(raw) <= 80 else raw[:77] + "..."
    return f"{env_name(field)}={shown!r}: {problem}; accepted: {accepted_form(field)}"


def config_error(exc: ValidationError, overrides: Mapping[str, object] | None = None) -> ConfigError:
    """One line per problem of a :class:`Settings` validation (no pydantic traceback, no URL to its docs)."""
    given: dict[str, object] = {f: os.environ[env_name(f)] for f in Settings.model_fields if env_name(f) in os.environ}
    given.update(overrides or {})
    return ConfigError([_line(e, given) for e in exc.errors(include_url=False)])


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (``overrides`` win); :class:`ConfigError` with one line per problem."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise config_error(exc, overrides) from None


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """One warning line per ``NMS_CDS_*`` variable that is neither a setting nor a documented other variable."""
    environ = os.environ if environ is None else environ
    known = [env_name(f) for f in Settings.model_fields]
    notes = []
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX) or name.upper() in known or name.upper() in OTHER_VARIABLES:
            continue
        suffixes = [k.removeprefix(ENV_PREFIX) for k in [*known, *OTHER_VARIABLES]]
        close = difflib.get_close_matches(name.upper().removeprefix(ENV_PREFIX), suffixes, n=1, cutoff=0.6)
        hint = f"; did you mean {ENV_PREFIX}{close[0]}?" if close else "; see docs/configuration.md"
        notes.append(f"{name} is not a setting of nms-cds and is ignored{hint}")
    return notes


def describe(settings: Settings, environ: Mapping[str, str] | None = None) -> list[tuple[str, str, str]]:
    """(variable, value with secrets redacted, 'environment' or 'default') for every setting."""
    environ = os.environ if environ is None else environ
    rows = []
    for field in Settings.model_fields:
        name = env_name(field)
        source = "environment" if environ.get(name) else "default"
        rows.append((name, redact(field, getattr(settings, field)), source))
    return rows


# --- nms-cds check-config -----------------------------------------------------------------------------

def collect() -> dict[str, Any]:
    """The environment's effective configuration (secrets redacted), its problems and warnings.

    ``settings``: one row per setting (``variable``, ``value``, ``source`` environment or default, ``valid``);
    an invalid value is shown as the default that would replace it, marked invalid.
    """
    problems: list[str] = []
    warnings = unknown_variables()
    settings: Settings | None = None
    try:
        settings = load_settings()
    except ConfigError as exc:
        problems.extend(exc.problems)
    failing = {line.split("=", 1)[0] for line in problems if line.startswith("NMS_CDS_")}  # "NMS_CDS_X='v': ..."
    if settings is None:  # show the rest: the failing settings at their defaults
        defaults = {name: info.get_default(call_default_factory=True) for name, info in Settings.model_fields.items()
                    if f"NMS_CDS_{name.upper()}" in failing}
        try:
            settings = Settings(**defaults)
        except Exception:  # a check across settings still fails: only the problems can be shown
            settings = None
    rows: list[dict[str, Any]] = []
    trusted: int | None = None
    policies: list[str] = []
    knowledge: dict[str, Any] | None = None
    if settings is not None:
        knowledge = _knowledge(settings, problems)
        rows = [{"variable": name, "value": value, "source": source, "valid": name not in failing}
                for name, value, source in describe(settings)]
        if not problems:
            warnings.extend(settings.warnings())
            if settings.auth == AuthMode.OFF:
                warnings.append("NMS_CDS_AUTH=off: every route is open (loopback development only)")
            else:
                from cds_service.auth import load_trusted_clients

                try:
                    clients = load_trusted_clients(settings.trusted_clients)
                    trusted = len(clients)
                    policies = client_policies(settings, clients)
                except ConfigError as exc:
                    problems.extend(exc.problems)
            if settings.auth == AuthMode.OFF:
                policies = client_policies(settings, {})
    return {"settings": rows, "trusted_clients": trusted, "policies": policies, "knowledge": knowledge,
            "problems": problems, "warnings": warnings}


def client_policies(settings: Settings, clients: Mapping[str, Any]) -> list[str]:
    """One line per policy: the default (NMS_CDS_POLICY_*), then each trusted client's effective one."""
    from cds_service.auth.policy import default_policy

    default = default_policy(settings)
    lines = [f"default: {default.describe()}"]
    for iss, client in sorted(clients.items()):
        tenant = f" (tenant {client.tenant})" if client.tenant else ""
        own = client.policy.over(default).describe() + " [own policy]" if client.policy else "the default"
        lines.append(f"{iss}{tenant}: {own}")
    return lines


def _knowledge(settings: Settings, problems: list[str]) -> dict[str, Any] | None:
    """The knowledge the service would run with: its version and each override of the site file with where it
    came from (``file: key``); an unusable site file adds its problems, one line each."""
    from cds_service.knowledge import load_knowledge

    try:
        loaded = load_knowledge(settings.site_file)
    except ConfigError as exc:
        problems.extend(exc.problems)
        return None
    return {"version": loaded.version, "site_file": str(loaded.path) if loaded.path else None,
            "overrides": [{"source": o.source, "change": o.change} for o in loaded.overrides]}


def table(report: dict[str, Any]) -> list[str]:
    """The ``check-config`` text: the settings table, then the problems and warnings, one line each."""
    out = ["effective configuration (secrets redacted):"]
    for row in report["settings"]:
        value = row["value"] or "(unset)"
        shown = value if row["valid"] else f"INVALID, the default would be: {value}"
        out.append(f"  {row['variable']:45} {shown}  [{row['source']}]")
    if report["trusted_clients"] is not None:
        out.append(f"  {'(trusted clients loaded)':45} {report['trusted_clients']}")
    if report.get("policies"):
        out.append("client policies:")
        out.extend(f"  {line}" for line in report["policies"])
    knowledge = report.get("knowledge")
    if knowledge is not None:
        where = knowledge["site_file"] or "packaged defaults, no NMS_CDS_SITE_FILE"
        out.append(f"knowledge {knowledge['version']} ({where}); overrides: {len(knowledge['overrides'])}")
        out.extend(f"  {o['source']}  {o['change']}" for o in knowledge["overrides"])
    for title in ("problems", "warnings"):
        out.append(f"{title}: {len(report[title])}")
        out.extend(f"  {line}" for line in report[title])
    return out
