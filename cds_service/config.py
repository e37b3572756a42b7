"""Typed settings for nms-cds, read from ``NMS_CDS_*`` environment variables: every setting and every
operational cap, with its default, bounds and description.

Every network default is an explicit, documented number here; nothing else in the package reads the
environment. Tests build :class:`Settings` directly and pass it to ``create_app``; the command line and
``create_app()`` read the environment through :func:`cds_service.config_report.load_settings`, which turns
every invalid value into one line naming the variable, the value's problem and the accepted form.
"""

from __future__ import annotations

import re
import ssl
from datetime import datetime
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    BeforeValidator,
    ByteSize,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from cds_service.net.urls import normalise_allowlist, split_allowlist

ENV_PREFIX = "NMS_CDS_"

# pydantic's ByteSize alone reads "32 Mb/s" as 32 MB and "1.3 B" as 1 byte: the form is checked first.
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(b|[kmg]i?b)?\s*", re.IGNORECASE)
SIZE_FORM = "a byte count (33554432) or a size with a unit B, kB, MB, GB, KiB, MiB or GiB ('32 MiB', '32MiB')"


def parse_size(value: object) -> object:
    """``"32 MiB"`` → 33554432 (units as pydantic's :class:`ByteSize` counts them); plain integers pass through."""
    if not isinstance(value, str):
        return value
    match = _SIZE.fullmatch(value)
    if not match:
        raise ValueError("not a size")
    number = float(match.group(1)) * ByteSize.byte_sizes[(match.group(2) or "b").lower()]
    if number != int(number):
        raise ValueError("not a whole number of bytes")
    return int(number)


ByteCount = Annotated[ByteSize, BeforeValidator(parse_size)]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class AuthMode(StrEnum):
    JWT = "jwt"
    OFF = "off"


class Settings(BaseSettings):
    """Service configuration. Environment prefix ``NMS_CDS_``; see docs/configuration.md."""

    # hide_input_in_errors: a ValidationError's text (a traceback) never repeats a value, e.g. a short token
    model_config = SettingsConfigDict(env_prefix="NMS_CDS_", env_ignore_empty=True, extra="ignore",
                                      hide_input_in_errors=True)

    # --- deployment -----------------------------------------------------------------------------
    environment: Literal["production", "development"] = Field(
        "production", description="'production' or 'development' ('dev' is read as development)"
    )
    public_base_url: str = Field(
        "http://127.0.0.1:8080",
        description="Externally visible base URL of this service (no trailing slash); JWT `aud` is built from it",
        json_schema_extra={"form": "an http:// or https:// URL with a host, e.g. https://cds.example.org"},
    )
    auth: AuthMode = Field(AuthMode.JWT, description="'jwt' (default) or 'off' (loopback development only)")
    auth_off_force: bool = Field(False, description="Allow auth=off on a non-loopback bind (never in production)")
    trusted_clients: Path | None = Field(None, description="JSON file listing trusted CDS clients (iss + jwks)")
    jwt_leeway_seconds: int = Field(30, ge=0, le=300)
    jwt_max_lifetime_seconds: int = Field(3600, ge=60, le=3600)
    jwks_refresh_min_interval_seconds: float = Field(60.0, ge=1)
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated allowed origins in production; '*' in development",
        json_schema_extra={"form": "a comma-separated list of origins, e.g. https://ehr.example.org ('*': "
                                   "development only)"},
    )

    # --- outbound FHIR --------------------------------------------------------------------------
    fhir_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="FHIR base URLs the service may query (comma, semicolon or whitespace separated, or a JSON "
                    "list); parsed into scheme, host, port and path prefix, kept in canonical form",
    )
    ca_bundle: Path | None = Field(
        None, description="PEM file (or OpenSSL hashed directory) of CA certificates trusted for FHIR and JWKS "
                          "https calls; default: REQUESTS_CA_BUNDLE, SSL_CERT_FILE, else the system trust store",
    )
    requests_ca_bundle: Path | None = Field(
        None, validation_alias="REQUESTS_CA_BUNDLE", description="The standard variable, used when "
                                                                 "NMS_CDS_CA_BUNDLE is unset",
    )
    ssl_cert_file: Path | None = Field(
        None, validation_alias="SSL_CERT_FILE", description="The standard OpenSSL variable, used when neither "
                                                            "NMS_CDS_CA_BUNDLE nor REQUESTS_CA_BUNDLE is set",
    )
    allow_insecure_fhir: bool = Field(False, description="Allow http:// fhirServer that is not loopback")
    fhir_connect_timeout: float = Field(1.0, gt=0, description="Seconds to open a TCP/TLS connection")
    fhir_read_timeout: float = Field(2.0, gt=0, description="Seconds to wait between bytes of a response")
    hook_budget_seconds: float = Field(
        3.0, gt=0, description="Total wall-clock budget for one hook call's FHIR work"
    )
    fhir_max_pages: int = Field(10, ge=1, description="Pages followed per query (next links)")
    fhir_max_resources: int = Field(5000, ge=1, description="Resources kept per query")
    resources_per_key: int = Field(
        10000, ge=1,
        description="Resources of the patient kept per prefetch key or query answer (the first: searches ask for "
                    "the newest first); the rest is cut, the key marked incomplete and the card says so",
    )
    draft_orders_per_request: int = Field(
        200, ge=1, description="Draft orders accepted in one hook request (400 beyond)",
    )
    fhir_max_response_bytes: ByteCount = Field(
        ByteSize(20 * 1024 * 1024), ge=1024, description="Largest FHIR response read",
        json_schema_extra={"form": SIZE_FORM},
    )
    fhir_pool_size: int = Field(16, ge=1, description="Connections kept per FHIR host")
    fhir_concurrency: int = Field(16, ge=1, description="FHIR queries in flight at once per worker process")

    # --- request limits ---------------------------------------------------------------------------
    max_body_bytes: ByteCount = Field(
        ByteSize(32 * 1024 * 1024), ge=1024,
        description="Largest accepted request body (413 beyond); a 10,000-Observation prefetch is about 8.5 MB",
        json_schema_extra={"form": SIZE_FORM},
    )
    max_json_depth: int = Field(64, ge=8, description="Deepest accepted JSON nesting")

    # --- serving (nms-cds serve; see docs/reliability.md "Serving") ------------------------------------
    front: str = Field(
        "nginx", pattern=r"^(nginx|none)$",
        description="'nginx': a buffering nginx front started by `nms-cds serve` reads whole requests before "
                    "gunicorn sees them; 'none': gunicorn listens itself (only behind another buffering proxy)",
    )
    client_header_timeout_seconds: float = Field(
        10.0, gt=0, le=300, description="Whole request line + headers must arrive within this (408 beyond)"
    )
    client_body_timeout_seconds: float = Field(
        10.0, gt=0, le=300, description="Longest pause between two reads of a request body (408 beyond)"
    )
    keepalive_timeout_seconds: float = Field(
        5.0, ge=0, le=300, description="Idle keep-alive connections are closed after this"
    )
    front_max_connections: int = Field(
        4096, ge=64, le=65536, description="Client connections the front holds at once"
    )
    front_max_requests_per_client: int = Field(
        256, ge=0, le=65536,
        description="Requests (headers read, body arriving or being answered) at once per client address; "
                    "429 beyond; 0: no limit",
    )
    request_timeout_seconds: float = Field(
        20.0, gt=0, le=600,
        description="A request still running after this answers 503 JSON and the worker goes on",
    )
    metrics_token: SecretStr | None = Field(
        None,
        description="Bearer token for GET /metrics; unset: /metrics is off in production (open in development)",
    )

    # --- behaviour --------------------------------------------------------------------------------
    service_id: str = Field("nms-order-sign", pattern=r"^[A-Za-z0-9\-_.]+$",
                            description="Service id of the order-sign service")
    patient_view_service_id: str = Field("nms-patient-view", pattern=r"^[A-Za-z0-9\-_.]+$",
                                         description="Service id of the patient-view service")
    order_select_service_id: str = Field("nms-order-select", pattern=r"^[A-Za-z0-9\-_.]+$",
                                         description="Service id of the order-select service")
    feedback_max_items: int = Field(50, ge=1, le=10_000, description="Feedback items accepted per request (413 beyond)")
    feedback_max_item_bytes: int = Field(
        8192, ge=256, le=1024 * 1024, description="Largest feedback item, as compact UTF-8 JSON (413 beyond)"
    )

    # --- persistence (cds_service/store/) -----------------------------------------------------------
    data_dir: Path = Field(
        Path("var"), description="Directory of the embedded SQLite store (created when missing)"
    )
    database_url: SecretStr | None = Field(
        None, description="postgresql://user:password@host:5432/db — PostgreSQL instead of the SQLite file"
    )
    redis_url: SecretStr | None = Field(
        None, description="redis://host:6379/0 — JWT replay cache in Redis (shared by several replicas)"
    )
    store_timeout_seconds: float = Field(
        5.0, gt=0, le=60, description="Wait for a locked SQLite file, a PostgreSQL connection or statement, Redis"
    )
    audit_retention_days: int = Field(
        400, ge=1, description="Card audit and feedback older than this are purged (hourly, and by `nms-cds purge`)"
    )
    audit_patient_ids: bool = Field(
        False, description="Operator opt-in: store patientId in the card audit (default: a keyed hash only)"
    )
    audit_hash_key: SecretStr | None = Field(
        None, description="Key of the patient-id hash; default: a random key kept in the store itself"
    )
    replay_max_per_issuer: int = Field(
        100_000, ge=10, description="Unexpired jti kept per trusted client; beyond, only that client gets 401"
    )
    log_level: LogLevel = Field("INFO", description="DEBUG, INFO, WARNING, ERROR or CRITICAL (any case)")
    log_patient_ids: bool = Field(False, description="Operator opt-in: include patientId in logs")
    fixed_now: datetime | None = Field(
        None, description="Pin the clinical clock (tests, demos and replay of recorded fixtures only)",
        json_schema_extra={"form": "an ISO 8601 date-time, e.g. 2026-11-24T12:00:00Z (UTC when no offset)"},
    )
    # --- hardening: key file, back-end refusals, quotas, disk floor ---------------------------------------------
    audit_hash_key_file: Path | None = Field(
        None, description="File holding the patient-id hash key (mode 0600 or 0400); default: "
                          "audit-hash.key in NMS_CDS_DATA_DIR, created on first start"
    )
    redis_eviction_checked: bool = Field(
        False, description="Operator statement that Redis cannot evict replay entries, for a Redis that refuses "
                           "CONFIG GET (else its maxmemory-policy must be noeviction)"
    )
    feedback_quota_per_hour: int = Field(
        3600, ge=0, description="Feedback rows one client (JWT iss) may add per hour; 429 beyond; 0: no limit"
    )
    feedback_quota_total: int = Field(
        1_000_000, ge=0, description="Feedback rows one client may keep in the store; 429 beyond; 0: no limit"
    )
    min_free_disk_bytes: ByteCount = Field(
        ByteSize(256 * 1024 * 1024), ge=0,
        description="/readyz is not ready when the store's or the temporary directory's file system has less free"
    )
    max_json_items: int = Field(
        3_000_000, ge=1000,
        description="Most JSON values in a request body, counted as its [, { and , bytes before decoding (413 "
                    "beyond); a 10,000-Observation prefetch (8.5 MB) counts about 400,000"
    )

    @field_validator("environment", mode="before")
    @classmethod
    def _environment_name(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip().lower()
            return "development" if value == "dev" else value
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_name(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("metrics_token")
    @classmethod
    def _long_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("NMS_CDS_METRICS_TOKEN must be at least 16 characters")
        return value

    @field_validator("fhir_allowlist", mode="before")
    @classmethod
    def _split_allowlist(cls, value: object) -> object:
        return split_allowlist(value) if isinstance(value, str) else value

    @field_validator("fhir_allowlist")
    @classmethod
    def _parse_allowlist(cls, value: list[str]) -> list[str]:
        return normalise_allowlist(value)  # ValueError naming the first bad entry (e.g. one without a host)

    @field_validator("ca_bundle", "requests_ca_bundle", "ssl_cert_file")
    @classmethod
    def _ca_exists(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and not value.exists():
            name = {"ca_bundle": "NMS_CDS_CA_BUNDLE", "requests_ca_bundle": "REQUESTS_CA_BUNDLE",
                    "ssl_cert_file": "SSL_CERT_FILE"}[info.field_name or "ca_bundle"]
            raise ValueError(f"{name}={value}: no such file or directory; name a PEM file of CA certificates")
        return value

    @field_validator("public_base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http(s) URL with a host")
        return value.strip().rstrip("/")

    @field_validator("cors_origins")
    @classmethod
    def _origin_form(cls, value: list[str]) -> list[str]:
        return [origin.rstrip("/") for origin in value]  # an Origin header never ends in "/"

    @model_validator(mode="after")
    def _no_wildcard_cors_in_production(self) -> Settings:
        if not self.is_development and "*" in self.cors_origins:
            raise ValueError("NMS_CDS_CORS_ORIGINS='*' is for development only (NMS_CDS_ENVIRONMENT=development); "
                             "accepted in production: a comma-separated list of origins, e.g. https://ehr.example.org")
        return self

    @model_validator(mode="after")
    def _distinct_service_ids(self) -> Settings:
        ids = [self.patient_view_service_id, self.order_select_service_id, self.service_id]
        if len(set(ids)) != len(ids):
            raise ValueError("NMS_CDS_SERVICE_ID, NMS_CDS_PATIENT_VIEW_SERVICE_ID and "
                             "NMS_CDS_ORDER_SELECT_SERVICE_ID must differ")
        return self

    @cached_property
    def tls_trust(self) -> tuple[str | bool, str]:
        """What https calls verify against, and where that came from (for the start-up log line):
        ``NMS_CDS_CA_BUNDLE``, ``REQUESTS_CA_BUNDLE``, ``SSL_CERT_FILE``, the system store, else certifi."""
        for source, value in (("NMS_CDS_CA_BUNDLE", self.ca_bundle), ("REQUESTS_CA_BUNDLE", self.requests_ca_bundle),
                              ("SSL_CERT_FILE", self.ssl_cert_file)):
            if value is not None:
                return str(value), source
        system = ssl.get_default_verify_paths()
        for path in (system.openssl_cafile, system.openssl_capath):
            if path and Path(path).exists() and (Path(path).is_file() or any(Path(path).iterdir())):
                return path, "system trust store"
        return True, "certifi"

    @property
    def is_development(self) -> bool:
        return self.environment == "development"

    def warnings(self) -> list[str]:
        """Valid but noteworthy choices, one line each (logged at start, shown by ``nms-cds check-config``)."""
        notes: list[str] = []
        if self.fixed_now is not None and not self.is_development:
            notes.append(f"NMS_CDS_FIXED_NOW={self.fixed_now.isoformat()} pins the clinical clock in production: "
                         "every time window is computed from that instant, not from now; unset it for live use")
        if self.store_timeout_seconds + 0.5 >= self.request_timeout_seconds:
            notes.append(f"NMS_CDS_STORE_TIMEOUT_SECONDS={self.store_timeout_seconds:g} is not below "
                         f"NMS_CDS_REQUEST_TIMEOUT_SECONDS={self.request_timeout_seconds:g}: a hung database would "
                         "stop requests by the watchdog instead of answering 503 with Retry-After")
        return notes
