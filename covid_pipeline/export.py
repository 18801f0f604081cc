"""One model to inspect and use: the head trained once on every image of a dataset version,
with the frozen backbone and the input pipeline, in one Keras file, plus its model card.

The exported model takes normalised grey radiographs ([B, S, S, 1], 0-255, S = the dataset's
image size, as ``ingest`` normalises them) and gives softmax [P(normal), P(COVID-19)].
Inside: ``RadiographInput`` (resize to the model's input size, grey to RGB, the
model's preprocessing: the ops feature extraction runs at view 0), the backbone, the head.
Loading it needs this package imported (the input layer is registered here).

Keras and TensorFlow are imported with this module: import it only to export or predict.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import posixpath
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from covid_pipeline import backbones, layout, storage, zoo
from covid_pipeline.augment import resize, rotated_inputs
from covid_pipeline.config import BenchmarkConfig, load_config
from covid_pipeline.errors import ConfigError, DataError
from covid_pipeline.features import (
    epoch_view,
    extract_features,
    feature_source,
    needed_views,
)
from covid_pipeline.head import build_head, train_head
from covid_pipeline.shards import load_dataset, read_parquet
from covid_pipeline.training import cached_features
from covid_pipeline.weights import backbone_weights

INTENDED_USE = (
    "Research only. Not a medical device and not for diagnosis: trained on a small public "
    "data set in which the classes differ by source and acquisition (see the confounds), "
    "so its scores may reflect how an image was made, not the disease.")


_INPUT_LAYER: list[type] = []


def input_layer() -> type:
    """:class:`RadiographInput`'s class, defined and registered with Keras on first use
    (so that importing this module does not import Keras)."""
    if _INPUT_LAYER:
        return _INPUT_LAYER[0]
    import keras

    @keras.saving.register_keras_serializable(package="covid_pipeline")
    class RadiographInput(keras.layers.Layer):
        """Normalised grey images → the backbone's input: resize (bilinear, antialiased),
        grey to RGB, ``model_name``'s preprocessing; feature extraction's ops at view 0."""

        def __init__(self, model_name: str, input_size: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.model_name = model_name
            self.input_size = int(input_size)
            self._preprocess = backbones.preprocess_fn(zoo.get(model_name))

        def call(self, images):
            import tensorflow as tf

            resized = resize(images, self.input_size)
            return rotated_inputs(resized, tf.zeros(tf.shape(resized)[:1]), self._preprocess)

        def compute_output_shape(self, input_shape):
            return (input_shape[0], self.input_size, self.input_size, 3)

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "model_name": self.model_name,
                    "input_size": self.input_size}

    _INPUT_LAYER.append(RadiographInput)
    return RadiographInput


@dataclass(frozen=True)
class Results:
    """A results folder (``<out>/results/<version>/<config-hash>``) and what made it."""

    uri: str
    out: str
    version: str
    cfg: BenchmarkConfig

    @property
    def dataset_uri(self) -> str:
        return layout.dataset(self.out, self.version)


def open_results(uri: str) -> Results:
    """The results folder at ``uri``, its output root, dataset version and config."""
    uri = uri.rstrip("/")
    config_hash, version = posixpath.basename(uri), posixpath.basename(posixpath.dirname(uri))
    results_dir = posixpath.dirname(posixpath.dirname(uri))
    if posixpath.basename(results_dir) != "results":
        raise ConfigError(f"--results {uri}: not a results folder; give "
                          "<out>/results/<dataset version>/<config hash> (it holds config.yaml)")
    try:
        cfg = load_config(layout.resolved_config(uri))
    except ConfigError as exc:
        raise ConfigError(f"--results {uri}: {exc}") from None
    if cfg.config_hash() != config_hash:
        raise ConfigError(f"--results {uri}: its config.yaml hashes to {cfg.config_hash()}, "
                          f"not {config_hash}; give the folder a run wrote")
    return Results(uri, posixpath.dirname(results_dir), version, cfg)


def final_head(res: Results, model: str) -> tuple[list[np.ndarray], dict[str, Any]]:
    """The head trained once on every image of the dataset version, on cached features
    (extracted here if this machine's precision has none) with the study's settings: the
    same training as the external test's head. Returns its weights and what made them."""
    cfg, info = res.cfg, load_dataset(res.dataset_uri)
    extract_features(res.dataset_uri, model, cfg, res.out)  # nothing to do when stored
    source = feature_source(res.out, model, cfg, info.image_size)
    manifest = read_parquet(info.manifest_uri).sort_values("image_id")
    shas = manifest["sha256"].astype(str).tolist()
    views = needed_views(cfg)
    feats = cached_features(source.root, shas, views, model)
    x = np.stack([feats[s] for s in shas]).astype(np.float32)
    columns = np.array([epoch_view(cfg, e, views) for e in range(cfg.epochs)], np.int64)
    fit = train_head(cfg, cfg.folds, x, manifest["label"].to_numpy(np.int64), columns,
                     np.zeros((0, x.shape[-1]), np.float32))
    return fit.weights, {"n_train_images": len(shas), "feature_precision": source.precision,
                         "weights_sha256": source.weights_sha256,
                         "train_seconds": fit.train_seconds}


def build_model(cfg: BenchmarkConfig, model: str, image_size: int,
                head_weights: list[np.ndarray]) -> Any:
    """Input pipeline + frozen backbone + head, float32, as one Keras model."""
    import keras

    spec = zoo.get(model)
    size = cfg.input_size or spec.input_size
    keras.mixed_precision.set_global_policy("float32")
    backbone = backbones.build_backbone(spec, backbone_weights(spec, cfg), input_size=size,
                                        seed=cfg.seed)
    backbone.trainable = False
    head = build_head(cfg)
    inputs = keras.Input((image_size, image_size, 1), name="radiograph")
    outputs = head(backbone(input_layer()(model, size, name="input_pipeline")(inputs),
                            training=False))
    net = keras.Model(inputs, outputs, name=f"covid19_{model}")
    head.set_weights(head_weights)
    return net


def leaderboard_row(res: Results, model: str) -> dict[str, Any]:
    """The model's row of the results folder's leaderboard (its CV metrics)."""
    try:
        board = pd.read_csv(io.BytesIO(storage.read_bytes(layout.leaderboard(res.uri, "csv"))))
    except FileNotFoundError:
        raise DataError(f"{res.uri}: no leaderboard.csv; run the benchmark to the end "
                        "first") from None
    rows = board[board["model"] == model]
    if rows.empty:
        raise ConfigError(f"--model {model}: not on the leaderboard of {res.uri}; choose one "
                          f"of {', '.join(map(str, board['model']))}")
    row = rows.iloc[0]
    return {k: (None if pd.isna(v) else v.item() if hasattr(v, "item") else v)
            for k, v in row.items()}


def export(results_uri: str, model: str, target: str) -> dict[str, Any]:
    """Train the final head, write ``target`` (.keras) and its model card beside it
    (``<target stem>.card.json`` / ``.card.md``); return the card."""
    if not target.endswith(".keras"):
        raise ConfigError(f"--out {target}: the file name must end with .keras")
    res = open_results(results_uri)
    zoo.get(model)
    row = leaderboard_row(res, model)
    if row.get("status") != "ok":
        raise DataError(f"--model {model}: its benchmark status is {row.get('status')!r}; "
                        "export a model that trained")
    info = load_dataset(res.dataset_uri)
    weights, made = final_head(res, model)
    net = build_model(res.cfg, model, info.image_size, weights)
    with tempfile.TemporaryDirectory(prefix="covid-export-") as tmp:
        local = os.path.join(tmp, "model.keras")
        net.save(local)
        with storage.writing(target) as part:
            shutil.copyfile(local, part)
    card = model_card(res, model, row, made, info.image_size)
    stem = target[: -len(".keras")]
    storage.write_json(f"{stem}.card.json", card)
    storage.write_text(f"{stem}.card.md", card_markdown(card))
    return card


METRICS_ON_CARD = ("auc", "balanced_accuracy", "sensitivity", "specificity", "f1")


def model_card(res: Results, model: str, row: dict[str, Any], made: dict[str, Any],
               image_size: int) -> dict[str, Any]:
    try:
        confounds = storage.read_json(layout.confounds(res.dataset_uri, "json"))["warnings"]
    except (FileNotFoundError, KeyError):
        confounds = []
    cv = {m: {"mean": row.get(f"{m}_mean"), "std": row.get(f"{m}_std"),
              "pooled": row.get(f"{m}_pooled"),
              "ci95": [row.get(f"{m}_ci_low"), row.get(f"{m}_ci_high")]}
          for m in METRICS_ON_CARD}
    return {
        "model": model, "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "dataset_version": res.version, "results": res.uri, "config_hash": res.cfg.config_hash(),
        "config": res.cfg.as_dict(),
        "input": {"shape": [image_size, image_size, 1],
                  "values": "grey 0-255, normalised as `covid-pipeline ingest` does "
                            "(`covid-pipeline predict` decodes and normalises any file)"},
        "output": "softmax [P(normal), P(COVID-19)]",
        "cv": {"folds": res.cfg.folds, "repeats": res.cfg.repeats, "rank": row.get("rank"),
               "tied_with_best": row.get("tied_with_best"), "metrics": cv,
               "border_only_control_auc": row.get("control_auc")},
        "training": {**made, "head": "trained once on every image of the dataset version, "
                                     "the study's settings (cached features)"},
        "confounds": confounds,
        "intended_use": INTENDED_USE,
    }


def card_markdown(card: dict[str, Any]) -> str:
    def num(v: Any) -> str:
        return "–" if v is None else f"{v:.3f}"

    lines = [f"# Model card: {card['model']} (COVID-19 vs normal chest X-ray)", "",
             f"**Intended use.** {card['intended_use']}", "",
             f"- dataset version `{card['dataset_version']}`, config `{card['config_hash']}` "
             f"({card['config'].get('name')}), created {card['created']}",
             f"- input: {card['input']['shape']} {card['input']['values']}; output: "
             f"{card['output']}",
             f"- backbone weights sha256 `{card['training']['weights_sha256']}`, features "
             f"{card['training']['feature_precision']}, head trained on "
             f"{card['training']['n_train_images']} images", "",
             f"## Cross-validation ({card['cv']['folds']} folds x {card['cv']['repeats']}; "
             f"rank {card['cv']['rank']})", "",
             "| metric | fold mean ± std | pooled [95 % interval] |", "|---|---|---|"]
    for m, v in card["cv"]["metrics"].items():
        lo, hi = v["ci95"]
        lines.append(f"| {m} | {num(v['mean'])} ± {num(v['std'])} | {num(v['pooled'])} "
                     f"[{num(lo)}, {num(hi)}] |")
    lines += ["", f"Border-only control AUC: {num(card['cv']['border_only_control_auc'])}", ""]
    if card["confounds"]:
        lines += ["## Confounds", ""] + [f"> **Warning:** {w}." for w in card["confounds"]]
    return "\n".join(lines) + "\n"
