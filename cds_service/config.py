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
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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


#: What the trend view reads (SMART App Launch 2 scopes): the patient-view templates' resource types.
SMART_SCOPE = ("launch launch/patient openid fhirUser patient/Patient.rs patient/Observation.rs "
               "patient/MedicationRequest.rs patient/MedicationAdministration.rs patient/MedicationStatement.rs "
               "patient/Condition.rs patient/AllergyIntolerance.rs patient/Medication.rs")


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
    quiet_period_hours: float = Field(
        24.0, ge=0, le=24 * 30, description="patient-view and order-select do not repeat a card accepted or "
        "overridden (with a reason) within this time, unless it worsens or a decisive finding is new; 0: off"
    )

    # --- SMART on FHIR trend view (cds_service/web/trend_app.py, docs/trend-view.md) ----------------------
    smart_client_id: str = Field(
        "nms-cds-trend-view", pattern=r"^[A-Za-z0-9\-_.:]+$",
        description="OAuth 2 client id of the trend view (a public client with PKCE) as registered with the EHR",
    )
    smart_scope: str = Field(
        SMART_SCOPE, pattern=r"^[\x21-\x7e]+( [\x21-\x7e]+)*$",
        description="Scopes the trend view asks for at launch (space-separated)",
    )
    smart_auth_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins of authorization servers the trend view's page may call (token endpoint) besides "
                    "the FHIR allowlist's origins",
    )
    smart_open_fhir_server: str | None = Field(
        None,
        description="Development only: the FHIR base the trend view opens without a SMART launch (no "
                    "authorization server); `nms-cds dev` sets its local FHIR server",
        json_schema_extra={"form": "a FHIR base URL within NMS_CDS_FHIR_ALLOWLIST (development only)"},
    )

    # background surveillance: `nms-cds watch` (docs/surveillance.md)
    watch_fhir_server: str | None = Field(
        None, description="FHIR server `nms-cds watch` reads (also needs an entry in NMS_CDS_FHIR_ALLOWLIST)"
    )
    watch_interval_seconds: float = Field(300.0, ge=5, le=3600, description="Seconds between surveillance passes")
    watch_lease_seconds: float = Field(
        60.0, ge=5, le=3600, description="A replica's hold on a patient it evaluates; a dead replica's expire"
    )
    watch_max_pages: int = Field(20, ge=1, description="Pages read per census search of a surveillance pass")
    watch_full_pass_seconds: float = Field(
        3600.0, ge=0, le=86400, description="Evaluate every watched patient at least this often (others: on new data)"
    )
    watch_webhook_url: str | None = Field(None, description="POST each new worklist entry here (JSON)")
    worklist_token: SecretStr | None = Field(
        None, min_length=16, description="`/worklist` needs `Authorization: Bearer <token>` (off without it)"
    )
    watch_write_back: bool = Field(False, description="Write each new worklist entry to the FHIR server as a Task")
    watch_client_id: str | None = Field(
        None, description="SMART Backend Services client id of `nms-cds watch` (with the token URL and key)"
    )
    watch_token_url: str | None = Field(None, description="OAuth 2 token endpoint for SMART Backend Services")
    watch_key_id: str | None = Field(None, description="`kid` of the watcher's key in the JWKS it registered")
    watch_private_key_file: Path | None = Field(
        None, description="PEM private key (RS384 or ES384) that signs the client assertion"
    )
    watch_scope: str = Field(
        "system/Patient.rs system/Observation.rs system/MedicationRequest.rs system/MedicationAdministration.rs "
        "system/MedicationStatement.rs system/Condition.rs system/AllergyIntolerance.rs system/Medication.rs",
        description="Scopes `nms-cds watch` asks for (add system/Task.c for write-back)",
    )

    front_max_uploads: int = Field(
        64, ge=1, le=65536,
        description="Authenticated hook and feedback calls (POST) in the front at once, all clients together; "
                    "with NMS_CDS_MAX_BODY_BYTES it bounds the front's disk spool; 429 beyond",
    )
    front_spool_dir: Path | None = Field(
        None, description="Directory of the front's request-body spool (authenticated uploads above 64 KiB); "
                          "default: under the temporary directory. Give it its own file system, apart from the store",
    )

    time_zone: str | None = Field(
        None, description="Time zone of the times on cards (IANA name); default: the UTC offset of the record's "
                          "own timestamps",
        json_schema_extra={"form": "an IANA time zone name, e.g. Europe/Berlin or America/New_York"},
    )

    site_file: Path | None = Field(
        None, description="The site knowledge file (TOML): thresholds within their bounds, value-set additions and "
        "removals, local code maps (docs/site-file.md); read once at start",
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

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            ZoneInfo(value.strip())
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("not a known IANA time zone name") from None
        return value.strip()

    @field_validator("smart_auth_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("smart_auth_origins")
    @classmethod
    def _origins_only(cls, value: list[str]) -> list[str]:
        out = []
        for origin in value:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/") or parts.query:
                raise ValueError(f"NMS_CDS_SMART_AUTH_ORIGINS entry {origin[:80]!r} is not an origin such as "
                                 "https://auth.example.org")
            out.append(f"{parts.scheme}://{parts.netloc}")
        return out

    @model_validator(mode="after")
    def _open_smart_in_development_only(self) -> Settings:
        if self.smart_open_fhir_server is not None and not self.is_development:
            raise ValueError("NMS_CDS_SMART_OPEN_FHIR_SERVER is for development only (NMS_CDS_ENVIRONMENT="
                             "development); in production the trend view needs a SMART launch")
        return self

    # --- per-client policy defaults (cds_service/auth/policy.py; a trusted client's "policy" overrides) --------
    policy_hooks: Annotated[list[Literal["patient-view", "order-select", "order-sign"]], NoDecode] = Field(
        ["patient-view", "order-select", "order-sign"], min_length=1,
        description="Hooks served (comma-separated); a service of another hook answers no card",
        json_schema_extra={"form": "a comma-separated list of patient-view, order-select, order-sign"},
    )
    policy_indicators: Annotated[list[Literal["info", "warning", "critical"]], NoDecode] = Field(
        ["info", "warning", "critical"], min_length=1,
        description="Card indicators returned (comma-separated); a card of another indicator is not returned",
        json_schema_extra={"form": "a comma-separated list of info, warning, critical"},
    )
    policy_silent: bool = Field(
        False, description="Silent mode: evaluate and audit every card as 'would have shown', return no card",
    )
    policy_max_cards: int = Field(10, ge=1, le=10, description="Most cards in one answer")
    policy_allow_critical: bool = Field(
        True, description="false: a critical card is sent as warning (EHRs that render critical as a pop-up)",
    )

    @field_validator("policy_hooks", "policy_indicators", mode="before")
    @classmethod
    def _split_policy_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip().lower() for part in value.split(",") if part.strip()]
        return value

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

    @field_validator("site_file")
    @classmethod
    def _site_file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"NMS_CDS_SITE_FILE={value}: no such file; name the site knowledge file (TOML)")
        return value

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
        if self.database_url is not None and self.audit_hash_key is None and self.audit_hash_key_file is None:
            notes.append("NMS_CDS_DATABASE_URL without NMS_CDS_AUDIT_HASH_KEY(_FILE): each replica makes its own "
                         "patient-hash key and replicas disagree on pseudonyms (quiet period, reports, worklist)")
        return notes
