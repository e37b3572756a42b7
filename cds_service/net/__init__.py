"""Outbound networking that knows nothing of the service: URL canonical form and allowlist (:mod:`.urls`),
HTTP sessions and TLS trust (:mod:`.http`)."""
