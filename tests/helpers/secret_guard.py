"""Every log record the suite's apps produce is checked for the secrets configured in those apps.

One handler on the root logger (installed by tests/conftest.py) sees every record that reaches logging in the
test processes: it renders the record as the operator's JSON line and, when it carries one, the full traceback
with the exception's message, and looks for every secret value of every app built so far (the ``SecretStr``
settings - metrics token, audit hash key, the passwords of the database and Redis URLs - and the patient-hash
key in use). A test during which a secret was logged fails, naming the logger. Cost: a few substring searches
per record. Server processes (``nms-cds serve``) are checked from their log files by
``tests.helpers.dbservers.ServiceProcess.stop``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from pydantic import SecretStr

from cds_service.config import Settings
from cds_service.logs import JsonFormatter

MIN_LENGTH = 8  # shorter values would match ordinary text by chance
_HEX_KEY = re.compile(r"[0-9a-f]{64}")  # a patient-hash key as hex: one per app, so looked up in a set


def secret_values(values: Iterable[str]) -> set[str]:
    """The secret parts of configured values: a URL's password, any other value whole."""
    found = set()
    for value in values:
        if "://" in value:
            try:
                password = urlsplit(value).password
            except ValueError:
                password = None
            if password:
                found.add(password)
        else:
            found.add(value)
    return {v for v in found if len(v) >= MIN_LENGTH}


def settings_secrets(settings: Settings) -> set[str]:
    return secret_values(value.get_secret_value() for name in type(settings).model_fields
                         if isinstance(value := getattr(settings, name), SecretStr))


ENV_SECRETS = ("NMS_CDS_METRICS_TOKEN", "NMS_CDS_AUDIT_HASH_KEY", "NMS_CDS_DATABASE_URL", "NMS_CDS_REDIS_URL")


def env_secrets(env: Mapping[str, str]) -> set[str]:
    return secret_values(env[name] for name in ENV_SECRETS if env.get(name))


class SecretGuard(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.secrets: set[str] = set()
        self.hex_keys: set[str] = set()
        self.leaks: list[str] = []
        self._json = JsonFormatter()
        self._plain = logging.Formatter()

    def add(self, values: Iterable[str]) -> None:
        for value in values:
            if _HEX_KEY.fullmatch(value):
                self.hex_keys.add(value)
            elif len(value) >= MIN_LENGTH:
                self.secrets.add(value)

    def leaked(self, text: str) -> bool:
        if any(secret in text for secret in self.secrets):
            return True
        return bool(self.hex_keys) and any(m in self.hex_keys for m in _HEX_KEY.findall(text))

    def emit(self, record: logging.LogRecord) -> None:
        if not self.secrets and not self.hex_keys:
            return
        try:
            text = self._json.format(record)
            if record.exc_info:
                text += self._plain.formatException(record.exc_info)
        except Exception:  # a record that cannot be formatted is logging's own problem, not a leak
            return
        if self.leaked(text):
            self.leaks.append(f"logger {record.name!r} ({record.levelname}): {record.msg!s:.80}")


GUARD = SecretGuard()
