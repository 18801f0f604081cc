"""External test sets: data from elsewhere that the cross-validation never saw.

The external sources (any layout, local or s3://) are ingested into a dataset version of
their own: never balanced, never folded (every image in fold 0), and without the images
that also occur in the cross-validation data: the same bytes (sha256) or a copy
(perceptual hash within :data:`folds.NEAR_DUPLICATE_BITS` bits: re-encoded or resized),
dropped and counted apart.
After cross-validation each model's head is trained once on all CV images (the cached
features, the study's settings) and predicts the external images from their view-0
features. An external set with one class supports only that class's recall (sensitivity
or specificity): the other metrics need both classes and are left empty, with a note that
says so.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd

from covid_pipeline import evaluation, layout, storage
from covid_pipeline.config import BenchmarkConfig, DataSettings
from covid_pipeline.dataset import report_of
from covid_pipeline.errors import DataError
from covid_pipeline.features import FeatureSource, epoch_view, needed_views
from covid_pipeline.folds import copies_of
from covid_pipeline.head import train_head
from covid_pipeline.ingest import ingest
from covid_pipeline.manifest import COVID, LABEL_NAMES, NORMAL
from covid_pipeline.metrics import fold_metrics
from covid_pipeline.shards import DatasetInfo, load_dataset, parquet_bytes, read_parquet
from covid_pipeline.shards import write_dataset as write_version
from covid_pipeline.sources import SourceSpec
from covid_pipeline.training import cached_features

log = logging.getLogger(__name__)

RESULT_FORMAT = 1
ROLE = "external"


def prepare_external(specs: list[SourceSpec], out: str, settings: DataSettings,
                     cv_dataset_uri: str) -> tuple[DatasetInfo, dict[str, Any]]:
    """Ingest the external sources into their own dataset version (one fold, no balancing),
    without the images the CV dataset ``cv_dataset_uri`` holds; return it and its report
    (``dropped_in_cv``: how many images were dropped as the same bytes as a CV image)."""
    result = ingest(specs, out, image_size=settings.image_size,
                    options=settings.source_options)
    cv = read_parquet(layout.dataset_manifest(cv_dataset_uri))
    found = result.manifest
    in_cv = found["sha256"].astype(str).isin(set(cv["sha256"].astype(str))).to_numpy()
    copies = np.zeros(len(found), bool)
    if "phash" in found and "phash" in cv and found["phash"].notna().all() \
            and cv["phash"].notna().all():
        copies = ~in_cv & copies_of(found["phash"], cv["phash"])
    manifest = found[~(in_cv | copies)].assign(fold=0)
    where = ", ".join(str(s) for s in specs)
    if manifest.empty:
        raise DataError(f"external set {where}: no usable image left ({len(found)} ingested: "
                        f"{int(in_cv.sum())} also in the cross-validation data, same sha256, "
                        f"{int(copies.sum())} copies of its images); give images the "
                        "cross-validation does not hold")
    report = report_of(result)
    report.update(role=ROLE, sources=[str(s) for s in specs], dropped_in_cv=int(in_cv.sum()),
                  dropped_copies=int(copies.sum()),
                  cv_dataset=load_dataset(cv_dataset_uri).version)
    version_settings = {"role": ROLE, "image_size": settings.image_size,
                        "source_options": settings.source_options}
    info = write_version(manifest, result.quarantine, out, version_settings, report)
    log.info("external set %s: %s; %d images dropped as also in the CV data, %d as copies "
             "of CV images", info.version, info.counts, report["dropped_in_cv"],
             report["dropped_copies"])
    return info, report


def result_key(cv: DatasetInfo, ext: DatasetInfo, cfg: BenchmarkConfig, model: str,
               train: FeatureSource, test: FeatureSource) -> dict[str, Any]:
    """Everything that changes a model's external predictions."""
    return {"format": RESULT_FORMAT, "dataset_version": cv.version,
            "external_version": ext.version, "config_hash": cfg.config_hash(), "model": model,
            "feature_precision": train.precision, "test_feature_precision": test.precision,
            "weights_sha256": train.weights_sha256}


def train_external(cv_dataset_uri: str, external_uri: str, model: str, cfg: BenchmarkConfig,
                   out: str, train_features: dict[str, Any], test_features: dict[str, Any]
                   ) -> dict[str, Any]:
    """Train ``model``'s head once on every CV image and predict the external set; store
    and return the record (reused when its key is unchanged).

    ``train_features`` / ``test_features``: what the extraction tasks of the CV and the
    external dataset returned. The head's batch order is seeded with fold index
    ``cfg.folds``, which no CV fold has.
    """
    cv, ext = load_dataset(cv_dataset_uri), load_dataset(external_uri)
    train_src, test_src = (FeatureSource.from_dict(train_features),
                           FeatureSource.from_dict(test_features))
    key = result_key(cv, ext, cfg, model, train_src, test_src)
    results = layout.results(out, cv.version, cfg.config_hash())
    uri = layout.external_result(results, model, ext.version)
    if storage.exists(uri):
        record = storage.read_json(uri)
        if record.get("status") == "ok" and all(record.get(k) == v for k, v in key.items()):
            return {**record, "reused": True}
    started = time.time()
    train = read_parquet(cv.manifest_uri).sort_values("image_id")
    test = read_parquet(ext.manifest_uri).sort_values("image_id")
    views = needed_views(cfg)
    train_shas = train["sha256"].astype(str).tolist()
    test_shas = test["sha256"].astype(str).tolist()
    feats = cached_features(train_src.root, train_shas, views, model)
    test_feats = cached_features(test_src.root, test_shas, 0, model)
    x_train = np.stack([feats[s] for s in train_shas]).astype(np.float32)
    x_test = np.stack([test_feats[s][0] for s in test_shas]).astype(np.float32)
    columns = np.array([epoch_view(cfg, e) for e in range(cfg.epochs)], np.int64)
    labels = train["label"].to_numpy(np.int64)
    fit = train_head(cfg, cfg.folds, x_train, labels, columns, x_test)
    prob, train_s, predict_s = fit.prob, fit.train_seconds, fit.predict_seconds
    y = test["label"].to_numpy(np.int64)
    pred_uri = layout.external_predictions(results, model, ext.version)
    storage.write_bytes(pred_uri, parquet_bytes(pd.DataFrame({
        "image_id": test["image_id"].astype(str).to_numpy(), "sha256": test_shas,
        "patient_id": test["patient_id"].astype(str).to_numpy(), "label": y,
        "prob_covid": prob.astype(np.float64), "model": model})))
    record = {**key, "status": "ok", "metrics": external_metrics(y, prob), "n_test": len(y),
              "n_train": len(labels), "predictions_uri": pred_uri, "reused": False,
              "timing": {"train_seconds": train_s, "predict_seconds": predict_s,
                         "wall_seconds": time.time() - started}}
    storage.write_json(uri, record)
    return record


def defined_metrics(labels: np.ndarray) -> tuple[str, ...]:
    """The interval metrics a set with these labels supports: all with both classes,
    else the present class's recall."""
    present = set(np.asarray(labels).tolist())
    if present == {COVID, NORMAL}:
        return evaluation.CI_METRICS
    return ("sensitivity",) if present == {COVID} else ("specificity",)


def missing_note(labels: np.ndarray) -> str | None:
    """Why metrics are absent for a single-class set (None with both classes)."""
    present = set(np.asarray(labels).tolist())
    if len(present) == 2 or not present:
        return None
    (only,) = present
    other = LABEL_NAMES[1 - only]
    kept = "sensitivity" if only == COVID else "specificity"
    return (f"only {LABEL_NAMES[only]} images: AUC and balanced accuracy need {other} "
            f"images too (and F1 says nothing without them), so only {kept} (the share of "
            f"{LABEL_NAMES[only]} images called so) is reported")


def external_metrics(labels: np.ndarray, prob: np.ndarray) -> dict[str, Any]:
    """:func:`metrics.fold_metrics` with the metrics a single-class set does not support
    set to None (a recall of an absent class is not 0, it is undefined)."""
    values = fold_metrics(labels, prob)
    keep = set(defined_metrics(labels))
    if keep != set(evaluation.CI_METRICS):
        for name in ("precision", *evaluation.CI_METRICS):
            if name not in keep:
                values[name] = None
    return values


def summary(record: dict[str, Any], n_resamples: int, seed: int) -> dict[str, Any]:
    """One model's leaderboard cells: ``external_<metric>`` with its 95 % interval
    (patient-level bootstrap of the external predictions) for the metrics that exist."""
    preds = read_parquet(record["predictions_uri"])
    y = preds["label"].to_numpy(np.int64)
    p = preds["prob_covid"].to_numpy(np.float64)
    kept = defined_metrics(y)
    point = evaluation.point_estimates(y, p)
    ci = (evaluation.bootstrap_intervals(y, p, preds["patient_id"].astype(str).tolist(),
                                         n_resamples, seed) if n_resamples else {})
    out: dict[str, Any] = {"external_n": len(y)}
    for m in evaluation.CI_METRICS:
        interval = ci.get(m) if m in kept else None
        out[f"external_{m}"] = point[m] if m in kept and point[m] is not None else np.nan
        out[f"external_{m}_ci_low"] = interval[0] if interval else np.nan
        out[f"external_{m}_ci_high"] = interval[1] if interval else np.nan
    out["external_note"] = missing_note(y)
    return out
