"""Any collection laid out as one sub-folder per class (``COVID-19/``, ``normal/``)."""

from __future__ import annotations

import posixpath

from covid_pipeline import storage
from covid_pipeline.errors import DataError
from covid_pipeline.manifest import COVID, NORMAL, Candidate, Rejected, SourceScan
from covid_pipeline.sources.common import safe_child

NAME = "folder"
CLASS_NAMES = {
    "covid": COVID, "covid-19": COVID, "covid19": COVID, "covid_19": COVID, "positive": COVID,
    "normal": NORMAL, "negative": NORMAL, "no finding": NORMAL, "no_finding": NORMAL,
}
SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".tif", ".tiff")


def scan(root: str, options: dict) -> SourceScan:
    """Every image file under ``<root>/<class>/``; each file is its own patient.

    Option ``classes`` maps folder names to labels (default: covid/covid-19 → 1,
    normal → 0); other folders are excluded and counted.
    """
    mapping = {k.lower(): v for k, v in (options.get("classes") or CLASS_NAMES).items()}
    result = SourceScan(NAME)
    files = storage.list_files(root)
    if not files:
        raise DataError(f"{root}: no files found; expected one sub-folder per class")
    prefix = root.rstrip("/") + "/"
    for uri in files:
        rel = uri[len(prefix) :] if uri.startswith(prefix) else posixpath.basename(uri)
        parts = rel.split("/")
        if len(parts) < 2 or parts[-1].startswith("."):
            continue
        if posixpath.splitext(parts[-1])[1].lower() not in SUFFIXES:
            result.exclude("not_an_image_suffix")
            continue
        label = mapping.get(parts[0].lower())
        if label is None:
            result.exclude(f"class:{parts[0]}")
            continue
        safe = safe_child(root, rel)
        image_id = f"{NAME}:{rel}"
        if safe is None:
            result.rejected.append(
                Rejected(NAME, image_id, uri, "path_escapes_root", "symbolic link leaves the root")
            )
            continue
        result.candidates.append(
            Candidate(image_id=image_id, patient_id=image_id, label=label, source=NAME, uri=safe)
        )
    return result
