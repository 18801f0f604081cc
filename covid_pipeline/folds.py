"""Stratified k-fold assignment, grouped by patient by default (no patient in two folds)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from covid_pipeline.config import GROUP_BYS, MIN_FOLDS
from covid_pipeline.errors import ConfigError, DataError
from covid_pipeline.manifest import LABEL_NAMES

GROUPINGS = GROUP_BYS
# Perceptual hashes (255 bits) of copies of one radiograph differ in a few bits (re-encoding
# at JPEG quality 60 or a 0.9x resize: at most 8 on ../shared/data, whose RSNA-layout files
# copied from ieee8023 images: 0 to 14), those of different radiographs in 64 or more.
NEAR_DUPLICATE_BITS = 24
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _roots(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def fold_groups(df: pd.DataFrame, max_bits: int = NEAR_DUPLICATE_BITS) -> np.ndarray:
    """A group id per row: rows of one patient, and rows whose perceptual hashes differ in at
    most ``max_bits`` bits (copies of one radiograph), are one group (union-find)."""
    n = len(df)
    parent = np.arange(n)

    def union(a: int, b: int) -> None:
        ra, rb = _roots(parent, a), _roots(parent, b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    for idx in df.reset_index(drop=True).groupby("patient_id", sort=False).indices.values():
        for j in idx[1:]:
            union(int(idx[0]), int(j))
    if "phash" in df and n > 1 and df["phash"].notna().all():
        bits = hash_bits(df["phash"])
        for i in range(n - 1):
            distance = _POPCOUNT[bits[i + 1:] ^ bits[i]].sum(axis=1)
            for j in np.flatnonzero(distance <= max_bits):
                union(i, i + 1 + int(j))
    return np.array([_roots(parent, i) for i in range(n)])


def hash_bits(hashes: pd.Series) -> np.ndarray:
    """uint8 [N, 32]: the bytes of each perceptual hash (hex)."""
    return np.stack([np.frombuffer(bytes.fromhex(h), dtype=np.uint8)
                     for h in hashes.astype(str)]) if len(hashes) else np.zeros((0, 32),
                                                                                np.uint8)


def copies_of(hashes: pd.Series, others: pd.Series, max_bits: int = NEAR_DUPLICATE_BITS
              ) -> np.ndarray:
    """Per hash of ``hashes``: whether some hash of ``others`` is within ``max_bits`` bits
    (a copy of one of those images, re-encoded or resized)."""
    a, b = hash_bits(hashes), hash_bits(others)
    if not len(a) or not len(b):
        return np.zeros(len(a), bool)
    return np.array([int(_POPCOUNT[b ^ row].sum(axis=1).min()) <= max_bits for row in a])


def near_duplicates(df: pd.DataFrame) -> dict[str, int]:
    """Groups that join images of more than one patient by their hashes, and their images."""
    groups = pd.Series(fold_groups(df))
    patients = df["patient_id"].reset_index(drop=True).groupby(groups).nunique()
    joined = patients[patients > 1].index
    return {"groups": int(len(joined)), "images": int(groups.isin(joined).sum())}


def assign_folds(df: pd.DataFrame, n_folds: int = 5, group_by: str = "patient",
                 seed: int = 42) -> pd.DataFrame:
    """Return a copy of ``df`` with a ``fold`` column in ``0..n_folds-1``."""
    if group_by not in GROUPINGS:
        raise ConfigError(f"--group-by {group_by!r}: use one of {', '.join(GROUPINGS)}")
    if n_folds < MIN_FOLDS:
        raise ConfigError(f"folds must be at least {MIN_FOLDS}, got {n_folds}")
    df = df.sort_values("image_id", kind="stable").reset_index(drop=True)
    check_enough_units(df, n_folds, group_by)
    labels = df["label"].to_numpy()
    if group_by == "patient":
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(df, labels, groups=fold_groups(df))
    else:
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(df, labels)
    fold = pd.Series(-1, index=df.index, dtype="int64")
    for k, (_, test_idx) in enumerate(splits):
        fold.iloc[test_idx] = k
    out = df.copy()
    out["fold"] = fold.to_numpy()
    return out


def repeat_seed(seed: int, repeat: int) -> int:
    """The split seed of a repeat of cross-validation: repeat 0 is the dataset's own."""
    if repeat == 0:
        return seed
    return int(np.random.SeedSequence([seed, repeat]).generate_state(1)[0])


def repeat_folds(manifest: pd.DataFrame, repeat: int, n_folds: int, group_by: str,
                 seed: int) -> pd.Series:
    """Each image's fold in ``repeat`` (indexed like ``manifest``): repeat 0 is the
    manifest's ``fold`` column, repeat r >= 1 a new seeded split of the same images, grouped
    the same way. A pure function of (manifest, r): adding repeats keeps the earlier ones."""
    if repeat == 0:
        return manifest["fold"]
    folded = assign_folds(manifest.drop(columns=["fold"], errors="ignore"), n_folds,
                          group_by, repeat_seed(seed, repeat))
    return manifest["image_id"].map(folded.set_index("image_id")["fold"]).astype("int64")


def check_enough_units(df: pd.DataFrame, n_folds: int, group_by: str) -> None:
    """Each class needs at least ``n_folds`` patients (or images, ungrouped) to fill the folds."""
    labels = df["label"].to_numpy()
    unit = "patients" if group_by == "patient" else "images"
    for label, name in LABEL_NAMES.items():
        mask = labels == label
        n = int(df.loc[mask, "patient_id"].nunique()) if group_by == "patient" else int(mask.sum())
        if n < n_folds:
            raise DataError(
                f"class {name} has {n} {unit}, fewer than --folds {n_folds}; "
                f"lower --folds or add data"
            )
