"""Training curves of the heads: loss and accuracy per epoch, on the training batches and on
the held-out fold, every fold of a model overlaid in one PNG (``<model>/curves.png``).

With Grad-CAM panels on, a model's PNG is drawn on a worker as soon as its folds are trained
(after its panel); otherwise by the aggregation. The PNG carries the digest of the curves it
shows: a rebuilt board draws only what is missing or stale. matplotlib is imported inside
:func:`curves_png` (slow to import).
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

from PIL import Image

from covid_pipeline import layout, storage
from covid_pipeline.imaging import FAST_PNG

PANELS = (("loss", "cross-entropy loss"), ("accuracy", "accuracy"))
KEY = "covid-pipeline-curves"  # the PNG text chunk holding the digest of the curves drawn
CURVES_FORMAT = 2  # in the digest: a change of the drawing redraws stored curves once


def fold_curves(records: list[dict[str, Any]], model: str) -> dict[int, dict[str, list[float]]]:
    """fold → curves of ``model``'s repeat-0 folds (not the control's) that have them."""
    return {int(r["fold"]): r["curves"] for r in sorted(records, key=lambda r: r["fold"])
            if r.get("model") == model and not r.get("control") and not r.get("repeat")
            and r.get("curves")}


def curves_key(model: str, by_fold: dict[int, dict[str, list[float]]]) -> str:
    """The digest of what :func:`curves_png` draws."""
    text = json.dumps({"format": CURVES_FORMAT, "model": model,
                       "folds": {str(k): v for k, v in by_fold.items()}}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def curves_png(model: str, by_fold: dict[int, dict[str, list[float]]]) -> bytes:
    """Two panels (loss, accuracy); per fold a solid line on its training batches and a
    dashed one on its held-out images, in the fold's colour. Fixed margins (tight_layout
    took a third of the drawing time); :func:`curves_key` in the PNG's text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    fig.subplots_adjust(left=0.07, right=0.99, bottom=0.14, top=0.9, wspace=0.22)
    colours = plt.get_cmap("tab10")
    for ax, (metric, label) in zip(axes, PANELS, strict=True):
        for i, (fold, curves) in enumerate(by_fold.items()):
            for key, style, where in ((metric, "-", "train"), (f"val_{metric}", "--", "held out")):
                values = curves.get(key) or []
                if values:
                    ax.plot(range(1, len(values) + 1), values, style, color=colours(i % 10),
                            label=f"fold {fold} {where}", linewidth=1.2)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2, loc="lower right")
    fig.suptitle(f"{model}: head training per fold (solid: training batches, dashed: the "
                 "held-out fold)", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={KEY: curves_key(model, by_fold)},
                pil_kwargs=FAST_PNG)
    plt.close(fig)
    return buf.getvalue()


def drawn_key(uri: str) -> str | None:
    """The :func:`curves_key` a stored curves PNG was drawn from (None: none readable)."""
    try:
        with Image.open(io.BytesIO(storage.read_bytes(uri))) as image:
            key = image.info.get(KEY)  # the text chunks before the pixels: nothing decoded
    except (storage.StorageError, OSError, ValueError, SyntaxError):  # missing, damaged
        return None
    return key if isinstance(key, str) else None


def write_model_curves(records: list[dict[str, Any]], results_uri: str, model: str
                       ) -> str | None:
    """Write ``model``'s ``curves.png`` unless the stored one shows the same curves; return
    its URI (None when the records have no curves)."""
    by_fold = fold_curves(records, model)
    if not by_fold:
        return None
    uri = layout.model_curves(results_uri, model)
    if drawn_key(uri) != curves_key(model, by_fold):
        storage.write_bytes(uri, curves_png(model, by_fold))
    return uri


def write_curves(records: list[dict[str, Any]], results_uri: str) -> dict[str, str]:
    """``curves.png`` of every model whose records have curves (drawn where missing or
    stale); return their URIs."""
    uris = {}
    for model in sorted({str(r.get("model")) for r in records if r.get("curves")}):
        uri = write_model_curves(records, results_uri, model)
        if uri is not None:
            uris[model] = uri
    return uris
