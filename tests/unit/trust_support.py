"""Trust levels for unit tests whose events link identities.

A `BatchProcessor` links nothing unless it is told which sources to trust, as the
worker links nothing for a source `TRAITFLOW_SOURCE_TRUST` does not name (trusted
links, `attributes.stitching`). A test that stitches says which of its sources are
trusted: `BatchProcessor(..., trust=trusting("events"))`."""

from __future__ import annotations

from attributes.stitching import SourceTrust, Trust


def trusting(*sources: str) -> SourceTrust:
    """`sources` trusted (a source is the topic's name where no `sources` mapping names
    another), every other source untrusted."""
    return SourceTrust(dict.fromkeys(sources, Trust.TRUSTED))
