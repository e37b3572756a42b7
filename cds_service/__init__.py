"""nms-cds: a CDS Hooks 2.0 order-sign service that warns about possible neuroleptic malignant syndrome."""

__version__ = "0.1.0"
