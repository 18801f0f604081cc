"""The acquisition-only baseline: how far the class can be told without looking at a chest.

A scikit-learn logistic regression on per-image acquisition facts only (native width,
height and aspect, bit depth, file format, colour mode, file size) and a coarse intensity
histogram of the normalised image, trained and tested on the same folds as the CNNs and
scored with the same metrics. When it ranks with the best CNNs, their scores may come from
the acquisition, not the disease.
"""

from __future__ import annotations

import io
import json
import time
from typing import Any

import numpy as np
import pandas as pd
import PIL
import pyarrow.parquet as pq
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from covid_pipeline import imaging, layout, storage
from covid_pipeline.config import BenchmarkConfig
from covid_pipeline.folds import repeat_folds
from covid_pipeline.metrics import fold_metrics
from covid_pipeline.shards import DatasetInfo, load_dataset, parquet_bytes, read_parquet
from covid_pipeline.stamped import read_stamped, write_stamped

NAME = "acquisition-only baseline"
HISTOGRAM_BINS = 16
HISTOGRAM_FORMAT = 1  # of the stored histograms (cache/histograms-<size>.parquet)
HISTOGRAMS_KEY = b"covid_pipeline.histograms"
CATEGORIES = {"file_format": ("dicom", "png", "jpeg"), "colour_mode": ("grey", "rgb", "rgba")}


def acquisition_features(manifest: pd.DataFrame, histograms: dict[str, np.ndarray]
                         ) -> pd.DataFrame:
    """One row per image (indexed by image_id): acquisition facts and the normalised
    image's intensity histogram (:func:`intensity_histograms`); no other pixel
    information."""
    m = manifest.set_index("image_id")
    out = pd.DataFrame(index=m.index)
    width = m.get("width", pd.Series(1, index=m.index)).astype(float).clip(lower=1)
    height = m.get("height", pd.Series(1, index=m.index)).astype(float).clip(lower=1)
    out["log_width"], out["log_height"] = np.log(width), np.log(height)
    out["aspect"] = width / height
    out["bit_depth"] = m.get("bit_depth", pd.Series(8, index=m.index)).astype(float)
    out["log_file_size"] = np.log1p(m.get("file_size", pd.Series(0, index=m.index))
                                    .astype(float))
    for col, values in CATEGORIES.items():
        column = m.get(col, pd.Series("unknown", index=m.index)).astype(str)
        for value in values:
            out[f"{col}={value}"] = (column == value).astype(float)
    hist = np.stack([histograms[i] for i in out.index])
    for b in range(HISTOGRAM_BINS):
        out[f"intensity_{b}"] = hist[:, b]
    return out


def histogram(png: bytes) -> np.ndarray:
    """The share of a grey PNG's pixels in each of :data:`HISTOGRAM_BINS` equal intensity
    bins (Pillow's 256-level count, summed in runs: a fifth of decoding to an array for
    ``np.histogram``)."""
    with Image.open(io.BytesIO(png)) as image:
        counts = np.asarray(image.convert("L").histogram(), dtype=np.float64)
    return counts.reshape(HISTOGRAM_BINS, -1).sum(axis=1) / counts.sum()


def intensity_histograms(info: DatasetInfo, cache_uri: str | None = None, batch: int = 256,
                         manifest: pd.DataFrame | None = None) -> dict[str, np.ndarray]:
    """image_id → :func:`histogram` of its normalised image.

    ``cache_uri``: earlier histograms by sha256 (a normalised image's key at its size,
    as in ``cache/png-<size>/``): only the images it lacks are decoded, from the dataset
    version's Parquet images of their folds, ``batch`` rows at a time, and it is written
    back with them. Without it a re-run decoded every kept image again, in the flow's
    process beside the workers (the benchmark's unchanged re-run: 2.0 -> 1.2 s with it, its
    1,000 images at 128 px; a 512 px image has 16 times the pixels). ``manifest``: the
    dataset version's, when the caller has read it.
    """
    known = read_histograms(cache_uri) if cache_uri else {}
    images = (read_parquet(info.manifest_uri) if manifest is None else manifest)[
        ["image_id", "sha256", "fold"]]
    lacking = ~images["sha256"].astype(str).isin(known)
    missing = set(images.loc[lacking, "sha256"].astype(str))
    for k in sorted({int(f) for f in images.loc[lacking, "fold"]}):  # fold k = shard k
        with storage.open_read(info.images_uri(k)) as fh:
            for rows in pq.ParquetFile(fh).iter_batches(batch_size=batch,
                                                        columns=["sha256", "png"]):
                for sha, png in zip(rows.column("sha256").to_pylist(),
                                    rows.column("png").to_pylist(), strict=True):
                    if sha in missing:
                        known[sha] = histogram(png)
    if missing and cache_uri:
        write_histograms(cache_uri, known)
    return {str(i): known[str(s)] for i, s in zip(images["image_id"], images["sha256"],
                                                  strict=True)}


def histograms_fingerprint() -> str:
    """What made the stored histograms besides the images: this format, the bins, and the
    decoder and image library versions (those of the normalised images). Another
    fingerprint discards the whole table."""
    return json.dumps({"format": HISTOGRAM_FORMAT, "bins": HISTOGRAM_BINS,
                       "decoder": imaging.DECODER_VERSION, "pillow": PIL.__version__},
                      sort_keys=True)


def read_histograms(uri: str) -> dict[str, np.ndarray]:
    """sha256 → histogram from :func:`write_histograms`' table; none when it is missing,
    unreadable or made otherwise (:func:`histograms_fingerprint`), and no row that is not
    a histogram (each is computed again)."""
    frame = read_stamped(uri, HISTOGRAMS_KEY, histograms_fingerprint())
    bins = [f"bin_{b}" for b in range(HISTOGRAM_BINS)]
    if frame is None or list(frame.columns) != ["sha256", *bins]:
        return {}
    try:
        values = frame[bins].to_numpy(np.float64)
    except (TypeError, ValueError):
        return {}
    valid = (np.isfinite(values).all(axis=1) & (values >= 0).all(axis=1)
             & np.isclose(values.sum(axis=1), 1.0))
    shas = frame["sha256"].astype(str)
    return {s: v for s, v, ok in zip(shas, values, valid, strict=True) if ok}


def write_histograms(uri: str, histograms: dict[str, np.ndarray]) -> None:
    """Store ``histograms`` (sha256 → :data:`HISTOGRAM_BINS` shares) as one Parquet table,
    atomically; two runs writing at once lose at most the other's new entries."""
    shas = sorted(histograms)
    values = np.stack([histograms[s] for s in shas]) if shas else np.zeros(
        (0, HISTOGRAM_BINS))
    frame = pd.DataFrame(values, columns=[f"bin_{b}" for b in range(HISTOGRAM_BINS)])
    frame.insert(0, "sha256", shas)
    write_stamped(uri, frame, HISTOGRAMS_KEY, histograms_fingerprint())


def train_baseline(dataset_uri: str, cfg: BenchmarkConfig, out: str) -> list[dict[str, Any]]:
    """Fit and score the baseline on every (repeat, fold) of ``cfg``; store each fold's
    predictions beside the models'; return fold records like the models' (cheap: seconds)."""
    info = load_dataset(dataset_uri)
    manifest = read_parquet(info.manifest_uri).sort_values("image_id").reset_index(drop=True)
    histograms = intensity_histograms(info, layout.intensity_histograms(out, info.image_size),
                                      manifest=manifest)
    x = acquisition_features(manifest, histograms).loc[manifest["image_id"]]
    y = manifest["label"].to_numpy(np.int64)
    results = layout.results(out, info.version, cfg.config_hash())
    records = []
    for repeat in range(cfg.repeats):
        folds = repeat_folds(manifest, repeat, cfg.folds, cfg.group_by, cfg.seed).to_numpy()
        for fold in range(cfg.folds):
            started = time.time()
            train, test = folds != fold, folds == fold
            model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
            model.fit(x.to_numpy()[train], y[train])
            prob = model.predict_proba(x.to_numpy()[test])[:, 1]
            uri = layout.fold_predictions(results, "baseline", fold, repeat)
            storage.write_bytes(uri, parquet_bytes(pd.DataFrame({
                "image_id": manifest["image_id"][test].astype(str).to_numpy(),
                "sha256": manifest["sha256"][test].astype(str).to_numpy(), "label": y[test],
                "prob_covid": prob.astype(np.float64), "repeat": repeat, "fold": fold,
                "model": NAME})))
            records.append({"model": NAME, "repeat": repeat, "fold": fold, "status": "ok",
                            "metrics": fold_metrics(y[test], prob), "n_test": int(test.sum()),
                            "predictions_uri": uri, "reused": False,
                            "timing": {"train_seconds": time.time() - started,
                                       "wall_seconds": time.time() - started}})
    return records
