"""Grad-CAM (Selvaraju et al. 2017; the keras.io example is the reference method) for an
exported model: the gradient of the COVID-19 score with respect to the backbone's last
convolutional feature map (the input of its global pooling), through the head.

The backbone is nested in the exported model, so its feature map is reached by a model
over the backbone's own graph: ``(backbone input) → (feature map, pooled features)``; the
head then runs on the pooled features inside the same gradient tape. A benchmark panel
takes the feature maps from the worker's kept backbone (:mod:`backbone_cache`) and the
channel weights from the head alone (:func:`pooled_heatmaps`: the same maps, no gradient
through the backbone, no model to build).

Keras and TensorFlow are imported inside the functions that run a model.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from covid_pipeline import backbone_cache, imaging, layout, storage, zoo
from covid_pipeline.control import box_bounds
from covid_pipeline.export import input_layer
from covid_pipeline.features import resize_all
from covid_pipeline.head import build_head
from covid_pipeline.shards import load_dataset, read_parquet
from covid_pipeline.tfsetup import backbone_precision, configure_tensorflow

PANEL_FORMAT = 2  # in a panel's key: a change of the drawing redraws stored panels once


def parts(net: Any) -> tuple[Any, Any, Any]:
    """(input pipeline, backbone, head) of a model :func:`export.build_model` made."""
    import keras

    pipeline = next(layer for layer in net.layers if isinstance(layer, input_layer()))
    nested = [layer for layer in net.layers if isinstance(layer, keras.Model)]
    backbone, head = nested[0], nested[-1]
    return pipeline, backbone, head


def heatmaps(net: Any, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM of the COVID-19 score for each image ([B, S, S, 1], 0-255): maps [B, h, w]
    in [0, 1] at the feature map's resolution (zero where no evidence), and P(COVID-19)."""
    import keras
    import tensorflow as tf

    pipeline, backbone, head = parts(net)
    pooling = backbone_cache.pooling_layer(backbone)  # the backbones' pooling="avg"
    grad_model = keras.Model(backbone.inputs, [pooling.input, backbone.output])
    x = pipeline(tf.convert_to_tensor(images, tf.float32))
    with tf.GradientTape() as tape:
        maps, pooled = grad_model(x, training=False)
        tape.watch(maps)
        score = head(pooled, training=False)[:, 1]
    grads = tape.gradient(score, maps)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    return normalised(tf.nn.relu(tf.reduce_sum(weights * maps, axis=-1)).numpy()), score.numpy()


def pooled_heatmaps(maps: np.ndarray, head: Any, backbone: Any = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`heatmaps` from the last feature maps ([B, h, w, C], float32) of a backbone
    that averages them: the gradient of the score with respect to each map position is
    1/(h w) of its gradient with respect to their mean, so the channel weights (the
    gradient's spatial mean) need the head's gradient (and that of the layers the
    ``backbone`` has after its pooling, if any: ConvNeXt's LayerNormalization) alone, not a
    pass back through the backbone."""
    import tensorflow as tf

    pooled = tf.constant(maps.mean(axis=(1, 2)))
    with tf.GradientTape() as tape:
        tape.watch(pooled)
        features = pooled if backbone is None else backbone_cache.after_pooling(backbone,
                                                                               pooled)
        score = head(features, training=False)[:, 1]
    weights = tape.gradient(score, pooled).numpy() / (maps.shape[1] * maps.shape[2])
    cam = np.maximum(np.einsum("bhwc,bc->bhw", maps, weights), 0.0)
    return normalised(cam), score.numpy()


def normalised(cam: np.ndarray) -> np.ndarray:
    """Each map divided by its peak (all zero where there is no positive evidence)."""
    peak = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
    return np.where(peak > 0, cam / np.where(peak > 0, peak, 1), 0.0)


def upsample(cam: np.ndarray, size: int) -> np.ndarray:
    """A [h, w] map resized to [size, size] (bilinear)."""
    import tensorflow as tf

    return tf.image.resize(cam[None, ..., None], (size, size)).numpy()[0, ..., 0]


def outside_share(cam: np.ndarray, box: float, side: int) -> float | None:
    """Share of a map's mass, upsampled to ``side`` px, outside the central box (``box`` of
    each side: the border-only control's), so a high share says the model looks at the
    borders."""
    cam = upsample(cam, side)
    total = float(cam.sum())
    if total <= 0:
        return None
    h, w = cam.shape
    (top, bottom), (left, right) = box_bounds(h, box), box_bounds(w, box)
    return 1.0 - float(cam[top:bottom, left:right].sum()) / total


def overlay_png(image: np.ndarray, cam: np.ndarray, title: str = "") -> bytes:
    """One radiograph with its heat map over it, as PNG."""
    return panel_png([image], [cam], [title], columns=1)


def panel_png(images: list[np.ndarray], cams: list[np.ndarray], titles: list[str],
              columns: int = 4, suptitle: str = "") -> bytes:
    """Radiographs (grey, [S, S]) with their Grad-CAM maps over them, in a grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    cols = max(1, min(columns, n))
    rows = max(1, -(-n // cols))
    # a fixed grid in inches, titles at a fixed height (tight_layout and matplotlib's
    # automatic title placement took over half of a panel's drawing time)
    side, title, gap, top = 2.4, 0.5, 0.1, (0.4 if suptitle else 0.05)
    width, height = cols * (side + 2 * gap), top + rows * (title + side + gap)
    fig = plt.figure(figsize=(width, height))
    for k, (image, cam, text) in enumerate(zip(images, cams, titles, strict=False)):
        row, col = divmod(k, cols)
        bottom = height - top - (row + 1) * (title + side + gap) + gap
        ax = fig.add_axes((col * (side + 2 * gap) / width + gap / width, bottom / height,
                           side / width, side / height))
        ax.axis("off")
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        ax.imshow(upsample(cam, image.shape[0]), cmap="jet", alpha=0.4, vmin=0, vmax=1)
        ax.set_title(text, fontsize=7, y=1.0, pad=3)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9, y=1 - 0.12 / height, va="top")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, pil_kwargs=imaging.FAST_PNG)
    plt.close(fig)
    return buf.getvalue()


def fold_heads(results_uri: str, model: str, folds: int
               ) -> tuple[dict[int, list[np.ndarray]], str]:
    """The stored heads of ``model``'s repeat-0 folds (folds without one are left out), and
    a digest of their bytes."""
    heads, digest = {}, hashlib.sha256()
    for k in range(folds):
        try:
            raw = storage.read_bytes(layout.fold_head(results_uri, model, k))
        except FileNotFoundError:
            continue
        digest.update(f"{k}:".encode() + hashlib.sha256(raw).digest())
        data = np.load(io.BytesIO(raw))
        heads[k] = [data[f"arr_{i}"] for i in range(len(data.files))]
    return heads, digest.hexdigest()


def stored_panel(results_uri: str, key: str) -> dict | None:
    """A model's stored panel summary if it was made under ``key``."""
    try:
        summary = storage.read_json(results_uri)
    except FileNotFoundError:
        return None
    return summary if summary.get("key") == key and storage.exists(summary["png"]) else None


def choose(preds, n: int, seed: int):
    """Up to ``n`` out-of-fold predictions, spread over (class, right/wrong): a seeded
    draw of about n/4 from each of the four, the rest from whichever have more."""
    preds = preds.sort_values("image_id").reset_index(drop=True)
    right = (preds["prob_covid"] > 0.5).astype(int) == preds["label"]
    rng = np.random.default_rng(seed)
    groups = [rng.permutation(np.flatnonzero((preds["label"] == c).to_numpy() & (right == r)))
              for c in (1, 0) for r in (True, False)]
    picked: list[int] = []
    depth = 0
    while len(picked) < min(n, len(preds)):
        for g in groups:
            if depth < len(g) and len(picked) < n:
                picked.append(int(g[depth]))
        depth += 1
    return pd.DataFrame(preds.iloc[picked]).reset_index(drop=True)


def model_panel(dataset_uri: str, model: str, cfg, out: str) -> dict:
    """The Grad-CAM panel of ``model``: ``cfg.gradcam_images`` out-of-fold test images,
    each under the head of the fold that held it out; written to ``<model>/gradcam.png``
    with ``gradcam.json``. Returns the mean share of heat outside the control's box."""
    info = load_dataset(dataset_uri)
    results = layout.results(out, info.version, cfg.config_hash())
    heads, key = panel_key(results, model, cfg, info.version)
    if not heads:
        raise FileNotFoundError(f"{model}: no stored fold heads under {results} (results "
                                "from before heads were kept); run with new results")
    stored = stored_panel(layout.model_gradcam(results, model, "json"), key)
    if stored is not None:
        return {**stored, "reused": True}
    preds = pd.concat([read_parquet(layout.fold_predictions(results, model, k))
                       for k in heads], ignore_index=True)
    chosen = choose(preds, cfg.gradcam_images, cfg.seed)
    wanted = set(chosen["image_id"].astype(str))
    pixels: dict[str, np.ndarray] = {}
    for k in sorted({int(f) for f in chosen["fold"]}):  # repeat 0: fold k = shard k
        with storage.open_read(info.images_uri(k)) as fh:
            for rows in pq.ParquetFile(fh).iter_batches(batch_size=256,
                                                        columns=["image_id", "png"]):
                for image_id, png in zip(rows.column("image_id").to_pylist(),
                                         rows.column("png").to_pylist(), strict=True):
                    if str(image_id) in wanted:
                        pixels[str(image_id)] = imaging.decode_png(png)
    # the feature maps of every chosen image in one pass of the worker's kept backbone (the
    # un-rotated view, in the precision its extraction ran: the same backbone), then each
    # fold's head on its images' maps
    configure_tensorflow()
    size = cfg.input_size or zoo.get(model).input_size
    kept = backbone_cache.backbone(model, cfg, backbone_precision())
    batch = np.stack([pixels[str(i)] for i in chosen["image_id"]])[..., None]
    maps = kept.maps(resize_all(batch, size, len(batch))).numpy()
    head = build_head(cfg)  # its own: the worker's compiled training head is not touched
    head.build((None, maps.shape[-1]))
    cam_of: dict[int, tuple[np.ndarray, float]] = {}
    for fold, rows in chosen.groupby("fold", sort=True):
        head.set_weights(heads[int(fold)])
        fold_cams, fold_scores = pooled_heatmaps(maps[rows.index.to_numpy()], head,
                                                 kept.model)
        cam_of.update({int(i): (c, float(p)) for i, c, p in zip(rows.index, fold_cams,
                                                                fold_scores, strict=True)})
    images, cams, titles, shares = [], [], [], []
    for i, row in enumerate(chosen.itertuples(index=False)):
        image = pixels[str(row.image_id)]
        cam, score = cam_of[i]
        share = outside_share(cam, cfg.control_box, info.image_size)
        truth = "COVID-19" if row.label == 1 else "normal"
        verdict = "right" if (score > 0.5) == (row.label == 1) else "wrong"
        images.append(image)
        cams.append(cam)
        titles.append(f"{row.image_id}\n{truth}, p={score:.2f} ({verdict}), fold "
                      f"{row.fold}\noutside box {share:.0%}" if share is not None else
                      f"{row.image_id}\n{truth}, p={score:.2f} ({verdict})")
        shares.append(share)
    backbone_cache.end_of_task()
    known = [s for s in shares if s is not None]
    summary = {"model": model, "key": key, "images": [str(i) for i in chosen["image_id"]],
               "outside_share": float(np.mean(known)) if known else None,
               "control_box": cfg.control_box,
               "png": layout.model_gradcam(results, model, "png")}
    storage.write_bytes(summary["png"], panel_png(
        images, cams, titles, suptitle=f"{model}: Grad-CAM of the COVID-19 score on "
        f"out-of-fold images (central box {cfg.control_box:.0%} of each side)"))
    storage.write_json(layout.model_gradcam(results, model, "json"), summary)
    return {**summary, "reused": False}


def panel_key(results_uri: str, model: str, cfg: Any, version: str) -> tuple[
        dict[int, list[np.ndarray]], str]:
    """The model's fold heads and the key of a panel made from them under ``cfg``."""
    heads, digest = fold_heads(results_uri, model, cfg.folds)
    return heads, (f"{PANEL_FORMAT}:{digest}:{cfg.gradcam_images}:{cfg.control_box}:"
                   f"{cfg.seed}:{version}")


def stored_panels(results_uri: str, cfg: Any, version: str) -> dict[str, dict] | None:
    """Every model's stored panel summary under its current key, or None when one must be
    made (no Keras: what the flow checks before starting a cluster)."""
    if not cfg.gradcam_images:
        return {}
    panels = {}
    for model in cfg.models:
        _, key = panel_key(results_uri, model, cfg, version)
        panel = stored_panel(layout.model_gradcam(results_uri, model, "json"), key)
        if panel is None:
            return None
        panels[model] = {**panel, "reused": True}
    return panels
