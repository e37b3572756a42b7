"""The pure clinical core: plain data in (:mod:`.model`), an :class:`Assessment` out.

No Flask, no HTTP, no clock: ``ClinicalInput.now`` is the only time the rules know.
"""

from cds_service.clinical.model import Assessment, ClinicalInput
from cds_service.clinical.rules import assess

__all__ = ["Assessment", "ClinicalInput", "assess"]
