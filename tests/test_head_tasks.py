"""Head-training tasks: one per (model, repeat, control) on cached features, one per fold
online; a failure names its fold and keeps the folds trained before it."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from covid_pipeline.config import resolve_config
from covid_pipeline.dataset import DataSettings, prepare
from covid_pipeline.errors import StorageError
from covid_pipeline.features import extract_features
from covid_pipeline.sources import SourceSpec
from covid_pipeline.synth import make_synthetic
from covid_pipeline.training import (
    failed_fold,
    folds_label,
    head_tasks,
    train_folds,
    training_jobs,
)


def test_cached_heads_train_a_models_folds_of_a_repeat_in_one_task():
    cfg = resolve_config("smoke", repeats=2, folds=3)  # cached, control on both models
    tasks = head_tasks(cfg)
    assert tasks == [("VGG16", 0, [0, 1, 2], False), ("VGG16", 1, [0, 1, 2], False),
                     ("ResNet50", 0, [0, 1, 2], False), ("ResNet50", 1, [0, 1, 2], False),
                     ("VGG16", 0, [0, 1, 2], True), ("ResNet50", 0, [0, 1, 2], True)]
    # every (model, repeat, fold, control) job in exactly one task
    assert sorted((m, r, k, c) for m, r, folds, c in tasks for k in folds) == sorted(
        training_jobs(cfg))


def test_online_folds_are_a_task_each_and_the_control_one_per_model():
    cfg = resolve_config("smoke", mode="online", folds=2)
    assert head_tasks(cfg) == [("VGG16", 0, [0], False), ("VGG16", 0, [1], False),
                               ("ResNet50", 0, [0], False), ("ResNet50", 0, [1], False),
                               ("VGG16", 0, [0, 1], True), ("ResNet50", 0, [0, 1], True)]


def test_folds_labels():
    assert folds_label([2]) == "fold 2"
    assert folds_label([0, 1, 2, 3, 4]) == "folds 0-4"
    assert folds_label([1], repeat=2) == "repeat 2 fold 1"


@pytest.mark.slow
def test_a_failing_fold_is_named_and_the_folds_before_it_stay_stored(tmp_path: Path):
    root = tmp_path / "data"
    make_synthetic(str(root), covid_patients=4, normals=8, size=96, seed=5)
    out = str(tmp_path / "out")
    cfg = resolve_config("smoke", models=["VGG16"], weights="none", epochs=1, folds=3,
                         input_size=32, balance="none")
    info, _ = prepare([SourceSpec("ieee8023", str(root / "ieee8023")),
                       SourceSpec("rsna", str(root / "rsna"))], out,
                      DataSettings(folds=3, image_size=64, balance="none"))
    stats = extract_features(info.uri, "VGG16", cfg, out)
    results = Path(out) / "results" / info.version / cfg.config_hash() / "VGG16"
    (results / "fold-1.json").mkdir(parents=True)  # fold 1's result cannot be written

    with pytest.raises(StorageError, match="cannot write") as raised:  # itself, not wrapped
        train_folds(info.uri, "VGG16", [0, 1, 2], cfg, out, stats)
    assert failed_fold(raised.value) == "fold 1"
    # the note and the records of the folds before it survive the trip from a Dask worker
    # (pickled), as the flow sees them
    back = pickle.loads(pickle.dumps(raised.value))
    assert failed_fold(back) == "fold 1"
    assert [(r["fold"], r["status"]) for r in back.fold_records] == [(0, "ok")]
    assert (results / "fold-0.json").is_file() and not (results / "fold-2.json").exists()

    (results / "fold-1.json").rmdir()  # another attempt trains only what is missing
    records = train_folds(info.uri, "VGG16", [0, 1, 2], cfg, out, stats)
    assert [(r["fold"], r["reused"]) for r in records] == [(0, True), (1, False), (2, False)]
    assert failed_fold(ValueError("no note")) is None
