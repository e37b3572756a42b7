"""Authentication of the calling CDS client (CDS Hooks "Trusting CDS Clients").

``NMS_CDS_AUTH=jwt`` (default): every route needs ``Authorization: Bearer <JWT>`` signed by a client in
``NMS_CDS_TRUSTED_CLIENTS``. ``NMS_CDS_AUTH=off``: development only (see :func:`check_startup`).
"""

from __future__ import annotations

import logging

from cds_service.config import AuthMode, Settings
from cds_service.errors import Unauthorized

log = logging.getLogger("cds_service.auth")


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def verify(self, authorization: str | None, audience: str) -> dict[str, object] | None:
        """Return the verified claims (None when auth is off); raise Unauthorized otherwise."""
        if self.settings.auth == AuthMode.OFF:
            return None
        raise Unauthorized("no trusted clients configured")
