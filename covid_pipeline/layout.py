"""Every path under the output URI (``--out``), in one place.

::

    <out>/
      cache/png-<size>/<sha[:2]>/<sha256>.png      normalised images, by content
      cache/histograms-<size>.parquet              their intensity histograms (baseline.py)
      index/ingest.parquet                         what reading each source file gave
      staging/<step>-<hash>/{manifest,quarantine}.parquet, report.json
      datasets/<version>/                          one dataset version (see shards.py)
        manifest.parquet, quarantine.parquet, dataset.json, confounds.{json,md}
        images/fold-<k>.parquet, tfrecords/fold-<k>.tfrecord
      features/<model>/<settings-hash>/<sha[:2]>/<sha256>.npy
      results/<version>/<config-hash>/
        config.yaml                                the resolved config that made them
        leaderboard.{csv,md,png}
        <model>/fold-<k>.json, <model>/fold-<k>.predictions.parquet     (repeat 0)
        <model>/repeat-<r>/fold-<k>.json, ...predictions.parquet          (repeat r >= 1)
        <model>/control/fold-<k>.json, ...predictions.parquet  (border-only control)
        <model>/external-<version>.json, ...predictions.parquet  (external test set)
      leaderboard.{csv,md,png}                     the latest run's, beside the folders
      watch/<kind>-<key>.json                      the dataset watcher's fingerprints
      synthetic-data/                              `covid-pipeline demo`'s data set

Nothing else joins path segments under the output root.
"""

from __future__ import annotations

from covid_pipeline.storage import join

LEADERBOARD_FILES = ("csv", "md", "png")


def normalised_image(out: str, sha256: str, size: int) -> str:
    return join(out, "cache", f"png-{size}", sha256[:2], f"{sha256}.png")


def ingest_index(out: str) -> str:
    """What reading each source file gave, by URI, size and version (ingest_index.py)."""
    return join(out, "index", "ingest.parquet")


def normalised_images(out: str, size: int) -> str:
    """The folder of :func:`normalised_image` files at one size."""
    return join(out, "cache", f"png-{size}")


def intensity_histograms(out: str, size: int) -> str:
    """The intensity histograms of the normalised images at one size, by sha256."""
    return join(out, "cache", f"histograms-{size}.parquet")


def staging(out: str, step: str, digest: str) -> str:
    return join(out, "staging", f"{step}-{digest}")


def staged_file(staged: str, name: str) -> str:
    """``manifest.parquet``, ``quarantine.parquet`` or ``report.json`` of a staging folder."""
    return join(staged, name)


def dataset(out: str, version: str) -> str:
    return join(out, "datasets", version)


def dataset_file(dataset_uri: str, name: str) -> str:
    """A file of a dataset version, by its name relative to the version's folder."""
    return join(dataset_uri, name)


def dataset_manifest(dataset_uri: str) -> str:
    return join(dataset_uri, "manifest.parquet")


def dataset_quarantine(dataset_uri: str) -> str:
    return join(dataset_uri, "quarantine.parquet")


def dataset_meta(dataset_uri: str) -> str:
    return join(dataset_uri, "dataset.json")


def confounds(dataset_uri: str, ext: str) -> str:
    """``confounds.json`` / ``confounds.md``: the dataset version's confound report."""
    return join(dataset_uri, f"confounds.{ext}")


def fold_tfrecord(dataset_uri: str, fold: int) -> str:
    return join(dataset_uri, "tfrecords", f"fold-{fold}.tfrecord")


def fold_images(dataset_uri: str, fold: int) -> str:
    return join(dataset_uri, "images", f"fold-{fold}.parquet")


def features(out: str, model: str, settings_hash: str) -> str:
    return join(out, "features", model, settings_hash)


def feature_file(root: str, sha256: str) -> str:
    return join(root, sha256[:2], f"{sha256}.npy")


def feature_relpath(sha256: str) -> str:
    """Where :func:`feature_file` puts a sha's file, relative to its feature root."""
    return f"{sha256[:2]}/{sha256}.npy"


def results(out: str, version: str, config_hash: str) -> str:
    return join(out, "results", version, config_hash)


def resolved_config(results_uri: str) -> str:
    return join(results_uri, "config.yaml")


def _repeat_dir(results_uri: str, model: str, repeat: int, control: bool = False) -> str:
    """Repeat 0 (single cross-validation) directly under the model; repeat r in repeat-<r>/;
    the border-only control's folds in control/."""
    base = join(results_uri, model, "control") if control else join(results_uri, model)
    return base if repeat == 0 else join(base, f"repeat-{repeat}")


def fold_result(results_uri: str, model: str, fold: int, repeat: int = 0,
                control: bool = False) -> str:
    return join(_repeat_dir(results_uri, model, repeat, control), f"fold-{fold}.json")


def fold_predictions(results_uri: str, model: str, fold: int, repeat: int = 0,
                     control: bool = False) -> str:
    return join(_repeat_dir(results_uri, model, repeat, control),
                f"fold-{fold}.predictions.parquet")


def fold_head(results_uri: str, model: str, fold: int, repeat: int = 0) -> str:
    """The trained head of a fold (NumPy .npz of its weights, in Keras' order)."""
    return join(_repeat_dir(results_uri, model, repeat), f"fold-{fold}.head.npz")


def model_gradcam(results_uri: str, model: str, ext: str) -> str:
    """``gradcam.png`` (the panel) and ``gradcam.json`` (what it shows) of a model."""
    return join(results_uri, model, f"gradcam.{ext}")


def tensorboard_run(base: str, model: str, fold: int, repeat: int = 0,
                    control: bool = False) -> str:
    """A head's TensorBoard run folder under ``--tensorboard``."""
    return join(base, model, *(["control"] if control else []),
                *([f"repeat-{repeat}"] if repeat else []), f"fold-{fold}")


def model_curves(results_uri: str, model: str) -> str:
    """The training curves of a model's heads (every fold of repeat 0 overlaid)."""
    return join(results_uri, model, "curves.png")


def external_result(results_uri: str, model: str, external_version: str) -> str:
    return join(results_uri, model, f"external-{external_version}.json")


def external_predictions(results_uri: str, model: str, external_version: str) -> str:
    return join(results_uri, model, f"external-{external_version}.predictions.parquet")


def leaderboard(folder: str, ext: str) -> str:
    return join(folder, f"leaderboard.{ext}")


def report(folder: str) -> str:
    """``report.html``: the self-contained report of a results folder."""
    return join(folder, "report.html")


def leaderboard_key(folder: str) -> str:
    """The digest of the inputs the leaderboard files beside it were made from."""
    return join(folder, "leaderboard.key")


def watch_state(out: str, kind: str, key: str) -> str:
    return join(out, "watch", f"{kind}-{key}.json")


def synthetic_data(out: str) -> str:
    return join(out, "synthetic-data")
