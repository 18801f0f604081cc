"""Read every candidate image once: validate, hash, normalise, and split good from bad.

Good images get a manifest row and a normalised PNG in a content-addressed cache
(``<out>/cache/png-<size>/<sha256>.png``) that later steps read. Bad ones get a quarantine
row with a reason; the rest of the data set goes on.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pandas as pd

from covid_pipeline import imaging, layout, storage
from covid_pipeline.errors import DataError
from covid_pipeline.manifest import (
    LABEL_NAMES,
    Candidate,
    Rejected,
    manifest_frame,
    quarantine_frame,
)
from covid_pipeline.sources import SourceSpec, scan

log = logging.getLogger(__name__)


@dataclass
class IngestResult:
    manifest: pd.DataFrame
    quarantine: pd.DataFrame
    excluded: dict[str, dict[str, int]] = field(default_factory=dict)  # source -> reason -> n

    def counts(self) -> dict[str, dict[str, int]]:
        """Per source, per class image counts."""
        out: dict[str, dict[str, int]] = {}
        for (source, name), n in self.manifest.groupby(["source", "label_name"]).size().items():
            out.setdefault(str(source), {})[str(name)] = int(n)
        return out


def normalised_uri(out: str, sha256: str, size: int) -> str:
    return layout.normalised_image(out, sha256, size)


def _read_one(cand: Candidate, out: str, size: int) -> dict | Rejected:
    try:
        data = storage.read_bytes(cand.uri)
    except FileNotFoundError:
        return Rejected(cand.source, cand.image_id, cand.uri, "missing_file",
                        "the metadata names a file that does not exist")
    except (OSError, storage.StorageError) as exc:
        return Rejected(cand.source, cand.image_id, cand.uri, "unreadable", str(exc))
    sha = hashlib.sha256(data).hexdigest()
    try:
        img = imaging.decode(data)
    except imaging.ImageRejected as exc:
        return Rejected(cand.source, cand.image_id, cand.uri, exc.reason, exc.detail)
    target = normalised_uri(out, sha, size)
    if not storage.exists(target):
        storage.write_bytes(target, imaging.encode_png(imaging.normalise(img.pixels, size)))
    patient = cand.patient_id
    if cand.fill_from_image and img.patient_id:
        patient = f"{cand.source}:{img.patient_id}"
    return {
        "image_id": cand.image_id,
        "patient_id": patient,
        "label": cand.label,
        "label_name": LABEL_NAMES[cand.label],
        "source": cand.source,
        "view": cand.view or img.view,
        "sex": cand.sex or img.sex,
        "age": cand.age if cand.age is not None else img.age,
        "uri": cand.uri,
        "sha256": sha,
        "width": img.width,
        "height": img.height,
        "file_format": img.file_format,
        "bit_depth": img.bit_depth,
        "colour_mode": img.colour_mode,
        "file_size": len(data),
        "phash": imaging.phash(img.pixels),
    }


def candidate_frame(candidates: list[Candidate]) -> pd.DataFrame:
    """Labels and patients of the candidates, an upper bound on what reading can yield.

    A candidate whose patient comes from its image header counts as a patient of its own.
    """
    return pd.DataFrame({
        "image_id": [c.image_id for c in candidates],
        "label": pd.Series([c.label for c in candidates], dtype="int64"),
        "patient_id": [c.image_id if c.fill_from_image else c.patient_id for c in candidates],
    })


def ingest(
    specs: list[SourceSpec],
    out: str,
    *,
    image_size: int = imaging.CANONICAL_SIZE,
    options: dict[str, dict] | None = None,
    threads: int | None = None,
    precheck: Callable[[pd.DataFrame], None] | None = None,
) -> IngestResult:
    """Scan every source, read every candidate image, and return manifest + quarantine.

    ``precheck`` gets the candidates (``label``, ``patient_id``) before any image is read or
    written, to fail early on a data set that cannot succeed (it raises DataError).
    """
    if not specs:
        raise DataError("no --source given; add e.g. --source ieee8023=/data/covid-chestxray")
    rejected: list[Rejected] = []
    candidates: list[Candidate] = []
    excluded: dict[str, dict[str, int]] = {}
    for spec in specs:
        result = scan(spec, (options or {}).get(spec.kind))
        candidates.extend(result.candidates)
        rejected.extend(result.rejected)
        if result.excluded:
            bucket = excluded.setdefault(spec.kind, {})
            for reason, n in result.excluded.items():
                bucket[reason] = bucket.get(reason, 0) + n

    unique: list[Candidate] = []
    seen_ids: set[str] = set()
    for cand in candidates:
        if cand.image_id in seen_ids:
            rejected.append(Rejected(cand.source, cand.image_id, cand.uri, "duplicate_row",
                                     "the metadata lists this image more than once"))
            continue
        seen_ids.add(cand.image_id)
        unique.append(cand)
    if precheck is not None:
        precheck(candidate_frame(unique))

    workers = threads or min(16, 2 * (os.cpu_count() or 1) + 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda c: _read_one(c, out, image_size), unique))

    rows: list[dict] = []
    by_sha: dict[str, str] = {}
    for res in results:
        if isinstance(res, Rejected):
            rejected.append(res)
        elif res["sha256"] in by_sha:
            rejected.append(Rejected(res["source"], res["image_id"], res["uri"], "duplicate_image",
                                     f"same bytes as {by_sha[res['sha256']]}"))
        else:
            by_sha[res["sha256"]] = res["image_id"]
            rows.append(res)
    for r in rejected:
        log.warning("quarantined %s (%s): %s %s", r.image_id, r.uri, r.reason, r.detail)
    return IngestResult(manifest_frame(rows), quarantine_frame(rejected), excluded)
