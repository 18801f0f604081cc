"""Upstream data-set layouts, each turning a root URI into manifest candidates."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from covid_pipeline.errors import ConfigError
from covid_pipeline.manifest import SourceScan
from covid_pipeline.sources import folder, ieee8023, rsna

SourceOptions = dict
Scanner = Callable[[str, "SourceOptions"], SourceScan]

SCANNERS: dict[str, Scanner] = {
    "ieee8023": ieee8023.scan,
    "rsna": rsna.scan,
    "folder": folder.scan,
}


@dataclass(frozen=True)
class SourceSpec:
    kind: str
    uri: str

    def __str__(self) -> str:
        return f"{self.kind}={self.uri}"


def parse_source(text: str) -> SourceSpec:
    """Parse ``KIND=URI`` as given to ``--source``."""
    kind, sep, uri = text.partition("=")
    kind = kind.strip().lower()
    if not sep or not uri.strip():
        raise ConfigError(f"--source {text!r}: expected KIND=URI, e.g. ieee8023=/data/covid")
    if kind not in SCANNERS:
        raise ConfigError(
            f"--source {text!r}: unknown kind {kind!r}; use one of {', '.join(sorted(SCANNERS))}"
        )
    return SourceSpec(kind, uri.strip().rstrip("/") or "/")


def scan(spec: SourceSpec, options: SourceOptions | None = None) -> SourceScan:
    return SCANNERS[spec.kind](spec.uri, dict(options or {}))
