"""The knowledge the rules run with: the packaged defaults, or those with a site's file over them
(``NMS_CDS_SITE_FILE``, :mod:`.sitefile`), and its ``knowledge_version``; the export as FHIR resources is
:mod:`.export`.

The file is read once, when the service starts (:class:`cds_service.runtime.Runtime`); the clinical core
receives the result as plain data (:class:`cds_service.clinical.site.SiteKnowledge`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cds_service import __version__
from cds_service.clinical.site import SiteKnowledge
from cds_service.knowledge.sitefile import Override, read


@dataclass(frozen=True)
class Knowledge:
    """The effective knowledge: ``site`` for the core, the file it came from and its overrides, one per change."""

    site: SiteKnowledge
    path: Path | None = None
    overrides: tuple[Override, ...] = ()

    @property
    def version(self) -> str:
        return self.site.version


def default_knowledge() -> Knowledge:
    """The packaged defaults: version ``<package version>+default``."""
    return Knowledge(SiteKnowledge(f"{__version__}+default"))


def load_knowledge(path: Path | None) -> Knowledge:
    """The defaults with the site file at ``path`` over them (:class:`~cds_service.errors.ConfigError`, one line
    per problem, if it cannot be used); the defaults without one."""
    if path is None:
        return default_knowledge()
    loaded = read(path, __version__)
    return Knowledge(loaded.site, loaded.path, loaded.overrides)


__all__ = ["Knowledge", "Override", "default_knowledge", "load_knowledge"]
