"""The RSNA Pneumonia Detection Challenge (stage 2) layout.

``stage_2_detailed_class_info.csv`` says which images are ``Normal``; ``Target == 0`` in
``stage_2_train_labels.csv`` is not the same thing (it includes "No Lung Opacity / Not
Normal"). Labels have one row per box, so an image can repeat; it is taken once.
"""

from __future__ import annotations

from covid_pipeline import storage
from covid_pipeline.manifest import NORMAL, Candidate, Rejected, SourceScan
from covid_pipeline.sources.common import clean, read_csv, require_columns, safe_child

NAME = "rsna"
CLASS_INFO = "stage_2_detailed_class_info.csv"
LABELS = "stage_2_train_labels.csv"
IMAGES = "stage_2_train_images"


def scan(root: str, options: dict) -> SourceScan:
    """Normals (``class == 'Normal'``) as candidates. Option ``classes``: names to keep."""
    keep = set(options.get("classes") or ["Normal"])
    info_uri = storage.join(root, CLASS_INFO)
    info = read_csv(info_uri)
    info.columns = [str(c).strip() for c in info.columns]
    require_columns(info, info_uri, ["patientId", "class"])

    labels_uri = storage.join(root, LABELS)
    known: set[str] | None = None
    if storage.exists(labels_uri):
        labels = read_csv(labels_uri)
        labels.columns = [str(c).strip() for c in labels.columns]
        require_columns(labels, labels_uri, ["patientId", "Target"])
        known = {str(p).strip() for p in labels["patientId"]}

    result = SourceScan(NAME)
    seen: set[str] = set()
    for row in info.to_dict("records"):
        pid = clean(row.get("patientId"))
        cls = clean(row.get("class")) or ""
        if not pid or pid in seen:
            continue  # one label row per box: the image is taken once
        seen.add(pid)
        if cls not in keep:
            result.exclude(f"class:{cls or 'empty'}")
            continue
        image_id = f"{NAME}:{pid}"
        if known is not None and pid not in known:
            result.rejected.append(
                Rejected(NAME, image_id, labels_uri, "inconsistent_metadata",
                         f"{pid} is in {CLASS_INFO} but not in {LABELS}")
            )
            continue
        uri = safe_child(root, f"{IMAGES}/{pid}.dcm")
        if uri is None:
            result.rejected.append(
                Rejected(NAME, image_id, info_uri, "path_escapes_root",
                         f"{pid!r} points outside {root}")
            )
            continue
        result.candidates.append(
            Candidate(image_id=image_id, patient_id=f"{NAME}:{pid}", label=NORMAL, source=NAME,
                      uri=uri, fill_from_image=True)
        )
    return result
