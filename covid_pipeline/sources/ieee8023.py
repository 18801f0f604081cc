"""The ieee8023 covid-chestxray-dataset layout: ``metadata.csv`` + ``images/`` (+ ``volumes/``).

Handles every historical variant: ``Patientid``/``patientid``, ``' url'``/``url``, with or
without ``modality`` and ``folder``, flat (``COVID-19, ARDS``) and hierarchical
(``Pneumonia/Viral/COVID-19``) findings, and forks whose image column is ``imagename`` or
absent (files named after ``patientid``).
"""

from __future__ import annotations

import posixpath

from covid_pipeline import storage
from covid_pipeline.manifest import COVID, NORMAL, Candidate, Rejected, SourceScan
from covid_pipeline.sources.common import (
    clean,
    normalise_columns,
    parse_age,
    read_csv,
    require_columns,
    safe_child,
)

NAME = "ieee8023"
FRONTAL_VIEWS = ("PA", "AP", "AP Supine", "AP semi erect", "AP erect")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".bmp", ".gif", ".tif", ".tiff")


def _key(text: str) -> str:
    return " ".join(text.lower().split())


def scan(root: str, options: dict) -> SourceScan:
    """Candidates from ``<root>/metadata.csv``.

    Options: ``views`` (frontal views by default), ``finding`` (``COVID-19``),
    ``xray_only`` (True), ``no_finding_as_normal`` (False).
    """
    views = {_key(v) for v in options.get("views") or FRONTAL_VIEWS}
    positive = options.get("finding", "COVID-19")
    xray_only = options.get("xray_only", True)
    normals = options.get("no_finding_as_normal", False)

    meta_uri = storage.join(root, "metadata.csv")
    df = normalise_columns(read_csv(meta_uri))
    require_columns(df, meta_uri, ["patientid", "finding", "view"])
    image_col = next((c for c in ("filename", "imagename") if c in df.columns), None)
    by_stem = None if image_col else _images_by_stem(root)

    result = SourceScan(NAME)
    for row in df.to_dict("records"):
        finding = clean(row.get("finding")) or ""
        modality = clean(row.get("modality"))
        view = clean(row.get("view")) or ""
        if xray_only and modality is not None and _key(modality) not in ("x-ray", "xray"):
            result.exclude(f"modality:{modality}")
            continue
        if positive in finding:
            label = COVID
        elif normals and _key(finding) == "no finding":
            label = NORMAL
        else:
            result.exclude(f"finding:{finding or 'empty'}")
            continue
        if _key(view) not in views:
            result.exclude(f"view:{view or 'empty'}")
            continue
        patient = clean(row.get("patientid"))
        folder = clean(row.get("folder")) or "images"
        names = _image_names(row, image_col, patient, by_stem)
        if not names:
            ident = patient or "?"
            result.rejected.append(
                Rejected(NAME, f"{NAME}:patient-{ident}", meta_uri, "missing_file",
                         f"no image file for patientid {ident}")
            )
            continue
        for name in names:
            rel = posixpath.join(folder, name) if image_col else name
            image_id = f"{NAME}:{rel}"
            uri = safe_child(root, rel)
            if uri is None:
                result.rejected.append(
                    Rejected(NAME, image_id, meta_uri, "path_escapes_root",
                             f"{rel!r} points outside {root}")
                )
                continue
            result.candidates.append(
                Candidate(
                    image_id=image_id,
                    patient_id=f"{NAME}:{patient or rel}",
                    label=label,
                    source=NAME,
                    uri=uri,
                    view=view or None,
                    sex=clean(row.get("sex")),
                    age=parse_age(row.get("age")),
                )
            )
    return result


def _image_names(
    row: dict, image_col: str | None, patient: str | None, by_stem: dict[str, list[str]] | None
) -> list[str]:
    if image_col:
        name = clean(row.get(image_col))
        return [name] if name else []
    return list((by_stem or {}).get(patient or "", []))


def _images_by_stem(root: str) -> dict[str, list[str]]:
    """Files under ``images/`` keyed by name without suffix (forks with no image column)."""
    folder = storage.join(root, "images")
    out: dict[str, list[str]] = {}
    for uri in storage.list_files(folder):
        name = uri[len(root.rstrip("/")) + 1 :]
        base = posixpath.basename(name)
        stem, ext = posixpath.splitext(base)
        if ext.lower() in IMAGE_SUFFIXES:
            out.setdefault(stem, []).append(name)
    return out
