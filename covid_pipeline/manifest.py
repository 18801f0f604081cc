"""Manifest and quarantine tables: one row per usable image, one per rejected input."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import pandas as pd

COVID, NORMAL = 1, 0
LABEL_NAMES = {COVID: "COVID-19", NORMAL: "normal"}

MANIFEST_COLUMNS = [
    "image_id",
    "patient_id",
    "label",
    "label_name",
    "source",
    "view",
    "sex",
    "age",
    "uri",
    "sha256",
    "width",
    "height",
    # acquisition facts, for the confound report and the acquisition-only baseline
    "file_format",
    "bit_depth",
    "colour_mode",
    "file_size",
    "phash",  # perceptual hash: re-encoded or resized copies share a fold group
]
QUARANTINE_COLUMNS = ["source", "image_id", "uri", "reason", "detail"]


@dataclass
class Candidate:
    """A metadata row that passed the protocol filters and names an image file."""

    image_id: str
    patient_id: str
    label: int
    source: str
    uri: str
    view: str | None = None
    sex: str | None = None
    age: float | None = None
    # RSNA: the DICOM header carries patient id, view, sex and age.
    fill_from_image: bool = False


@dataclass
class Rejected:
    source: str
    image_id: str
    uri: str
    reason: str
    detail: str = ""


@dataclass
class SourceScan:
    """What a source layout yields before any image is read."""

    source: str
    candidates: list[Candidate] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    excluded: dict[str, int] = field(default_factory=dict)

    def exclude(self, reason: str) -> None:
        self.excluded[reason] = self.excluded.get(reason, 0) + 1


def manifest_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    df["label"] = df["label"].astype("int64")
    df["width"] = df["width"].astype("int64")
    df["height"] = df["height"].astype("int64")
    df["bit_depth"] = df["bit_depth"].astype("int64")
    df["file_size"] = df["file_size"].astype("int64")
    df["age"] = pd.to_numeric(df["age"], errors="coerce").astype("float64")
    for col in ("image_id", "patient_id", "label_name", "source", "view", "sex", "uri", "sha256",
                "file_format", "colour_mode", "phash"):
        df[col] = df[col].astype("string")
    return df


def quarantine_frame(rejected: list[Rejected]) -> pd.DataFrame:
    df = pd.DataFrame([asdict(r) for r in rejected], columns=QUARANTINE_COLUMNS)
    return df.astype("string")
