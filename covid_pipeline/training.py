"""Training and evaluation of one (model, fold): frozen backbone + the study's head, in the
mode the config names (:data:`TRAINERS`).

Returns plain values (metrics, timing, the URI of the per-image predictions), never a Keras
object. A finished fold's result file is reused: an interrupted run redoes only what is
missing.

Keras is imported inside the function that needs it (seconds to import).
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from covid_pipeline import backbone_cache, layout, storage, zoo
from covid_pipeline import control as controls
from covid_pipeline.augment import view_angles
from covid_pipeline.config import BenchmarkConfig
from covid_pipeline.features import (
    FeatureSource,
    epoch_view,
    feature_source,
    needed_views,
    read_features,
    resize_all,
    run_backbone,
)
from covid_pipeline.folds import repeat_folds
from covid_pipeline.head import HeadFit, train_head
from covid_pipeline.metrics import fold_metrics
from covid_pipeline.shards import (
    DatasetInfo,
    Split,
    load_dataset,
    load_split,
    parquet_bytes,
    read_parquet,
)
from covid_pipeline.tfsetup import backbone_precision, configure_tensorflow
from covid_pipeline.weights import needs_download, weights_digest

log = logging.getLogger(__name__)

RESULT_FORMAT = 2  # 2: keyed by feature precision and weights digest
ONLINE_PRECISION = "float32"  # train_online runs the backbone in float32 on every device


def results_root(out: str, version: str, cfg: BenchmarkConfig) -> str:
    return layout.results(out, version, cfg.config_hash())


def write_resolved_config(out: str, version: str, cfg: BenchmarkConfig) -> str:
    """``results/<version>/<hash>/config.yaml``: how the results beside it were made (a
    valid ``--config`` file). Rewritten by each run; unhashed fields (models, mode) are the
    latest run's."""
    return storage.write_text(layout.resolved_config(results_root(out, version, cfg)),
                              cfg.to_yaml())


def fold_result_uri(out: str, version: str, cfg: BenchmarkConfig, model: str, fold: int,
                    repeat: int = 0, control: bool = False) -> str:
    return layout.fold_result(results_root(out, version, cfg), model, fold, repeat, control)


def cached_features(root: str, shas: list[str], views: int, model: str
                    ) -> dict[str, np.ndarray]:
    """The cached features of every sha (views 0..``views``, [views + 1, D] each), or a
    one-line error saying how many are missing and where."""
    # files may hold more views than this run needs (an earlier run's): keep what it uses
    feats = {sha: arr[: views + 1] for sha, arr in read_features(root, shas, keep=True).items()
             if arr.shape[0] > views}
    if len(feats) < len(set(shas)):
        raise RuntimeError(f"{len(set(shas)) - len(feats)} of {len(set(shas))} images have no "
                           f"readable cached features for {model} under {root}; run the "
                           "feature-extraction task first (an unreadable file is logged with "
                           "its URI: delete it)")
    return feats


def train_cached(info: DatasetInfo, model: str, fold: int, cfg: BenchmarkConfig,
                 source: FeatureSource, repeat: int = 0, views: int | None = None,
                 control: bool = False):
    """Train the head on the features under ``source`` (the extraction's, which may have run
    on another kind of worker): epoch e on view ``epoch_view(e)`` of ``views`` (default
    :func:`needed_views`), test on view 0.

    Rows come in image_id order, as in :func:`train_online` (the same batches). ``repeat``
    r >= 1 uses that repeat's split of the same images (:func:`folds.repeat_folds`): the
    same features, no backbone pass."""
    manifest = read_parquet(info.manifest_uri).sort_values("image_id")
    shas = sorted(set(manifest["sha256"].astype(str)))
    views = needed_views(cfg) if views is None else views
    feats = cached_features(source.root, shas, views, model)

    def split(mask) -> tuple[Split, np.ndarray]:
        part = manifest[mask]
        shas = part["sha256"].astype(str).tolist()
        return (Split(None, part["label"].to_numpy(np.int64), part["image_id"].astype(str)
                      .tolist(), shas), np.stack([feats[s] for s in shas]).astype(np.float32))

    folds = repeat_folds(manifest, repeat, cfg.folds, cfg.group_by, cfg.seed)
    train, x_train = split(folds != fold)
    test, x_test = split(folds == fold)
    columns = np.array([epoch_view(cfg, e, views) for e in range(cfg.epochs)], np.int64)
    fit = train_head(cfg, fold, x_train, train.labels, columns, x_test[:, 0], repeat,
                     test.labels, tensorboard(cfg, model, fold, repeat, control))
    return test, fit, {"train_seconds": fit.train_seconds,
                       "predict_seconds": fit.predict_seconds, "backbone_passes": 0}


def tensorboard(cfg: BenchmarkConfig, model: str, fold: int, repeat: int = 0,
                control: bool = False) -> list[Any]:
    """A Keras TensorBoard callback logging to ``<cfg.tensorboard>/<model>[/control]
    [/repeat-r]/fold-k``, or none."""
    if not cfg.tensorboard:
        return []
    import keras

    return [keras.callbacks.TensorBoard(
        log_dir=layout.tensorboard_run(cfg.tensorboard, model, fold, repeat, control))]


def train_online(info: DatasetInfo, model: str, fold: int, cfg: BenchmarkConfig):
    """The study's procedure: every epoch of the fold sends its rotated training images
    through the frozen backbone (epoch e: view ``e + 1``'s angles), nothing is kept.

    The backbone is frozen and in inference mode, so its output does not depend on the
    head's training: each epoch's features are computed first (float32, full batches),
    then the head trains on them batch by batch exactly as on the whole model. They are
    held in memory: train images x epochs x width floats (~0.3 GB at the paper's scale).
    """

    spec = zoo.get(model)
    size = cfg.input_size or spec.input_size
    train = load_split(info, [k for k in range(info.n_folds) if k != fold])
    test = load_split(info, [fold])
    t0 = time.perf_counter()
    n, epochs, bs = len(train), cfg.epochs, cfg.extract_batch_size
    try:
        # the worker's kept backbone (built and traced once per process)
        forward = backbone_cache.backbone(model, cfg, ONLINE_PRECISION).forward
        rows = np.tile(np.arange(n), epochs)
        angles = np.concatenate([view_angles(cfg.seed, train.shas, e + 1,
                                             cfg.rotation_degrees)
                                 for e in range(epochs)]) if n else np.zeros(0, np.float32)
        x_train = run_backbone(forward, resize_all(train.images, size, bs), rows, angles, bs)
        x_test = run_backbone(forward, resize_all(test.images, size, bs),
                              np.arange(len(test)), np.zeros(len(test), np.float32), bs)
    finally:
        backbone_cache.end_of_task()  # the kept backbone and the cached head stay usable
    x_train = x_train.reshape(epochs, n, -1).transpose(1, 0, 2)
    backbone_s = time.perf_counter() - t0
    fit = train_head(cfg, fold, x_train, train.labels, np.arange(epochs), x_test,
                     test_labels=test.labels, callbacks=tensorboard(cfg, model, fold))
    return test, fit, {"train_seconds": backbone_s + fit.train_seconds,
                       "predict_seconds": fit.predict_seconds,
                       "backbone_passes": n * epochs + len(test)}


# How each mode trains one fold: (info, model, fold, cfg, source, repeat) -> (test split,
# the head's fit: probabilities and curves, timing). ``source`` is the feature root
# (cached) or None (online, which runs repeat 0 only: the config refuses online with
# repeats > 1).
TRAINERS: dict[str, Callable[..., tuple[Split, HeadFit, dict[str, Any]]]] = {
    "cached": lambda info, model, fold, cfg, source, repeat: train_cached(
        info, model, fold, cfg, source, repeat),
    "online": lambda info, model, fold, cfg, source, repeat: train_online(
        info, model, fold, cfg),
}


def fold_key(version: str, cfg: BenchmarkConfig, model: str, fold: int, precision: str,
             weights_sha256: str, repeat: int = 0) -> dict[str, Any]:
    """Everything that changes a fold's predictions; a stored result is reused only when
    its key equals this. ``mode`` is left out: both modes train on the same batches and
    agree within 1e-3 (tests/test_features.py at 3 and 5 folds)."""
    return {"format": RESULT_FORMAT, "dataset_version": version,
            "config_hash": cfg.config_hash(), "model": model, "repeat": repeat, "fold": fold,
            "feature_precision": precision, "weights_sha256": weights_sha256}


def reusable(uri: str, key: dict[str, Any], quiet: bool = False,
             head_uri: str | None = None) -> dict[str, Any] | None:
    """The stored result at ``uri`` (marked ``reused``) if it succeeded under ``key`` (and,
    given ``head_uri``, its trained head is stored: results from before heads were kept
    are trained again, once, so that Grad-CAM has them)."""
    if not storage.exists(uri) or (head_uri is not None and not storage.exists(head_uri)):
        return None
    record = storage.read_json(uri)
    stored = {"repeat": 0, **record}  # records from before repeats are repeat 0
    if stored.get("status") == "ok" and all(stored.get(k) == v for k, v in key.items()):
        record["reused"] = True
        return record
    if not quiet:
        log.info("%s: made with other settings (%s); training again", uri,
                 ", ".join(k for k, v in key.items() if stored.get(k) != v))
    return None


def training_jobs(cfg: BenchmarkConfig) -> list[tuple[str, int, int, bool]]:
    """Every (model, repeat, fold, control) the benchmark trains a head for."""
    return [(m, r, k, False) for m in cfg.models for r in range(cfg.repeats)
            for k in range(cfg.folds)] + [(m, 0, k, True) for m in cfg.controlled_models
                                          for k in range(cfg.folds)]


def head_tasks(cfg: BenchmarkConfig) -> list[tuple[str, int, list[int], bool]]:
    """The head-training tasks, as (model, repeat, folds, control): in ``cached`` mode and
    for the control one per (model, repeat, control), training its folds in turn (a smoke
    head on cached features is 0.2-0.4 s of CPU here, the order of a task's own Prefect
    round trips on its worker); in ``online`` mode one per fold (each is GPU work)."""
    groups: dict[tuple, list[int]] = {}
    for model, repeat, fold, control in training_jobs(cfg):
        one_task = control or cfg.mode == "cached"
        groups.setdefault((model, repeat, control, None if one_task else fold), []).append(fold)
    return [(model, repeat, folds, control)
            for (model, repeat, control, _), folds in groups.items()]


def folds_label(folds: list[int], repeat: int = 0) -> str:
    """How logs and the board name folds of a repeat: ``fold 2``, ``folds 0-4``,
    ``repeat 1 fold 2``."""
    text = f"fold {folds[0]}" if len(folds) == 1 else f"folds {folds[0]}-{folds[-1]}"
    return text if repeat == 0 else f"repeat {repeat} {text}"


def stored_results(dataset_uri: str, cfg: BenchmarkConfig, out: str, precision: str,
                   jobs: list[tuple[str, int, int, bool]]) -> list[dict[str, Any]] | None:
    """The reusable stored result of every (model, repeat, fold, control) job, computed by
    workers whose backbone precision is ``precision``; None as soon as one is missing (so
    a re-run that has nothing to train need not start a cluster). Reads no images."""
    info = load_dataset(dataset_uri)
    digests = {m: weights_digest(zoo.get(m), cfg) for m in {job[0] for job in jobs}}
    records = []
    for model, repeat, fold, control in jobs:
        cached = cfg.mode == "cached" or control
        key = fold_key(info.version, cfg, model, fold, precision if cached else ONLINE_PRECISION,
                       digests[model], repeat)
        if control:
            key.update(controls.of(cfg).key())
        record = reusable(fold_result_uri(out, info.version, cfg, model, fold, repeat, control),
                          key, quiet=True, head_uri=None if control else layout.fold_head(
                              results_root(out, info.version, cfg), model, fold, repeat))
        if record is None:
            return None
        records.append(record)
    return records


def stored_results_here(dataset_uri: str, config: dict[str, Any], out: str,
                        jobs: list[tuple[str, int, int, bool]]) -> list[dict[str, Any]] | None:
    """:func:`stored_results` for this process's backbone precision and weights files: run
    on each worker of a standing cluster (:func:`cluster.on_every_worker`), which alone
    knows them (imports TensorFlow unless ``COVID_PIPELINE_PRECISION`` is set). None, at
    once, when a weights file would have to be downloaded first (not here: this runs outside
    any task, on the worker's event loop; the extraction fetches it)."""
    cfg = BenchmarkConfig.from_dict(config)
    if any(needs_download(zoo.get(model), cfg) for model in {job[0] for job in jobs}):
        return None
    return stored_results(dataset_uri, cfg, out, backbone_precision(),
                          [tuple(j) for j in jobs])  # type: ignore[misc]


def train_fold(dataset_uri: str, model_name: str, fold: int, cfg: BenchmarkConfig,
               out: str, features: dict[str, Any] | None = None, repeat: int = 0,
               control: bool = False) -> dict[str, Any]:
    """Train and evaluate ``model_name`` on ``fold`` of ``repeat``; return (and store) its
    result record.

    ``features`` (cached mode, and the control) is what the extraction task returned:
    which feature root to read, in which precision and from which weights. Without it,
    this worker's own. ``control``: the border-only control's fold (:mod:`control`):
    cached features of the images with their centre blacked out, whatever the mode.
    """
    info = load_dataset(dataset_uri)
    source = None
    cached = cfg.mode == "cached" or control
    if cached:
        source = (FeatureSource.from_dict(features) if features else
                  feature_source(out, model_name, cfg, info.image_size, control=control))
        precision, digest = source.precision, source.weights_sha256
    else:
        precision, digest = ONLINE_PRECISION, weights_digest(zoo.get(model_name), cfg)
    key = fold_key(info.version, cfg, model_name, fold, precision, digest, repeat)
    if control:
        key.update(controls.of(cfg).key())
    uri = fold_result_uri(out, info.version, cfg, model_name, fold, repeat, control)
    record = reusable(uri, key, head_uri=None if control else layout.fold_head(
        results_root(out, info.version, cfg), model_name, fold, repeat))
    if record is not None:
        return record
    configure_tensorflow()
    started = time.time()
    if control:
        test, fit, timing = train_cached(info, model_name, fold, cfg, source, repeat,
                                         cfg.effective_control_views, control=True)
    else:
        test, fit, timing = TRAINERS[cfg.mode](info, model_name, fold, cfg, source, repeat)
    prob = fit.prob
    pred_uri = layout.fold_predictions(results_root(out, info.version, cfg), model_name, fold,
                                       repeat, control)
    if not control:  # Grad-CAM of its test images needs this fold's own head
        buf = io.BytesIO()
        np.savez(buf, *fit.weights)
        storage.write_bytes(layout.fold_head(results_root(out, info.version, cfg), model_name,
                                             fold, repeat), buf.getvalue())
    storage.write_bytes(pred_uri, parquet_bytes(pd.DataFrame({
        "image_id": test.image_ids, "sha256": test.shas, "label": test.labels,
        "prob_covid": prob.astype(np.float64), "repeat": repeat, "fold": fold,
        "model": model_name,
    })))
    record = {
        **key,
        "status": "ok",
        "mode": "cached" if control else cfg.mode,
        "control": control,
        "metrics": fold_metrics(test.labels, prob),
        "curves": fit.curves,
        "n_test": len(test),
        "test_image_ids_sha256": _ids_digest(test.image_ids),
        "predictions_uri": pred_uri,
        "timing": {**timing, "wall_seconds": time.time() - started},
        "reused": False,
    }
    storage.write_json(uri, record)
    return record


def train_folds(dataset_uri: str, model_name: str, folds: list[int], cfg: BenchmarkConfig,
                out: str, features: dict[str, Any] | None = None, repeat: int = 0,
                control: bool = False) -> list[dict[str, Any]]:
    """:func:`train_fold` of each of ``folds`` in turn; their records. A failure stops at
    its fold, which a note on the exception names (:func:`folds_label`, read back by
    :func:`failed_fold`); the records of the folds before it ride on the exception
    (``fold_records``, for the board's row) and are stored, so another attempt trains only
    the rest."""
    records: list[dict[str, Any]] = []
    for fold in folds:
        try:
            records.append(train_fold(dataset_uri, model_name, fold, cfg, out, features,
                                      repeat, control))
        except Exception as exc:
            exc.add_note(folds_label([fold], repeat))
            exc.fold_records = records  # type: ignore[attr-defined]
            raise
    return records


def failed_fold(exc: BaseException) -> str | None:
    """The fold a :func:`train_folds` failure happened in (its note), if any."""
    return next((note for note in reversed(getattr(exc, "__notes__", ()))
                 if note.startswith(("fold ", "repeat "))), None)


def _ids_digest(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]
