"""The whole data path in one call: ingest → balance → folds → shards."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

from covid_pipeline import imaging
from covid_pipeline.balance import STRATEGIES, balance
from covid_pipeline.folds import GROUPINGS, assign_folds
from covid_pipeline.ingest import IngestResult, ingest
from covid_pipeline.manifest import ManifestError
from covid_pipeline.shards import DatasetInfo, write_dataset
from covid_pipeline.sources import SourceSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataSettings:
    """Everything that decides a dataset version besides the source files themselves."""

    balance: str = "undersample"
    folds: int = 5
    group_by: str = "patient"
    seed: int = 42
    image_size: int = imaging.CANONICAL_SIZE
    source_options: dict[str, dict] = field(default_factory=dict)

    def validate(self) -> None:
        if self.balance not in STRATEGIES:
            raise ManifestError(f"--balance {self.balance!r}: use one of {', '.join(STRATEGIES)}")
        if self.group_by not in GROUPINGS:
            raise ManifestError(f"--group-by {self.group_by!r}: use one of {', '.join(GROUPINGS)}")
        if self.folds < 2:
            raise ManifestError(f"--folds {self.folds}: need at least 2 folds")
        if not 64 <= self.image_size <= 2048:
            raise ManifestError(f"image size {self.image_size}: use 64..2048")

    def as_dict(self) -> dict:
        return asdict(self)


def report_of(result: IngestResult) -> dict:
    q = result.quarantine
    return {
        "counts": {"ingested": result.counts()},
        "excluded": result.excluded,
        "quarantined": {str(k): int(v) for k, v in q.groupby("reason").size().items()},
    }


def prepare(specs: list[SourceSpec], out: str, settings: DataSettings) -> tuple[
    DatasetInfo, dict
]:
    """Ingest the sources, balance, assign folds and write the dataset version."""
    settings.validate()
    result = ingest(specs, out, image_size=settings.image_size, options=settings.source_options)
    report = report_of(result)
    balanced, breport = balance(result.manifest, settings.balance, settings.seed)
    folded = assign_folds(balanced, settings.folds, settings.group_by, settings.seed)
    report["balance"] = breport.as_dict()
    report["sources"] = [str(s) for s in specs]
    info = write_dataset(folded, result.quarantine, out, settings.as_dict(), report)
    return info, report
