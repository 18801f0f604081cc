"""Helpers shared by the source layouts: CSV reading, safe paths inside a root."""

from __future__ import annotations

import io
import os
import posixpath

import pandas as pd

from covid_pipeline import storage
from covid_pipeline.errors import DataError


def read_csv(uri: str) -> pd.DataFrame:
    """Read a metadata CSV (UTF-8 with or without BOM, else Latin-1) as strings."""
    try:
        raw = storage.read_bytes(uri)
    except FileNotFoundError as exc:
        raise DataError(
            f"{uri}: file not found; point --source at the data set's root"
        ) from exc
    if not raw.strip():
        raise DataError(f"{uri}: the file is empty; restore the metadata CSV")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{uri}: not a readable CSV ({exc}); check the file") from exc
    return df


def normalise_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Strip and lower-case column names (``' url'`` → ``url``, ``Patientid`` → ``patientid``)."""
    return df.rename(columns={c: str(c).strip().lower() for c in df.columns})


def require_columns(df: pd.DataFrame, uri: str, required: list[str]) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        found = ", ".join(str(c) for c in df.columns) or "none"
        raise DataError(
            f"{uri}: missing required column(s) {', '.join(missing)}; found: {found}"
        )


def safe_child(root: str, relative: str) -> str | None:
    """URI of ``relative`` inside ``root``, or None when it would escape the root.

    Rejects absolute paths, any ``..`` component, and (for local roots) symbolic links whose
    target lies outside the root.
    """
    rel = relative.replace("\\", "/").strip()
    if not rel or rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
        return None
    if ".." in rel.split("/"):
        return None
    norm = posixpath.normpath(rel)
    if norm == ".":
        return None
    uri = storage.join(root, norm)
    if storage.is_local(root):
        real_root = os.path.realpath(storage.local_path(root))
        real = os.path.realpath(storage.local_path(uri))
        if real != real_root and not real.startswith(real_root + os.sep):
            return None
    return uri


def clean(value: object) -> str | None:
    text = "" if value is None else str(value).strip()
    return text or None


def parse_age(value: object) -> float | None:
    text = clean(value)
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None
