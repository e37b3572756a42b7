"""Developer and integrator commands of ``nms-cds`` (filled in by the FHIR-sandbox tooling)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the tool sub-commands to the ``nms-cds`` parser."""
    _ = (sub, argparse)
