"""Training curves of the heads: loss and accuracy per epoch, on the training batches and on
the held-out fold, every fold of a model overlaid in one PNG (``<model>/curves.png``).

matplotlib is imported inside :func:`curves_png` (slow to import).
"""

from __future__ import annotations

import io
from typing import Any

from covid_pipeline import layout, storage

PANELS = (("loss", "cross-entropy loss"), ("accuracy", "accuracy"))


def fold_curves(records: list[dict[str, Any]], model: str) -> dict[int, dict[str, list[float]]]:
    """fold → curves of ``model``'s repeat-0 folds (not the control's) that have them."""
    return {int(r["fold"]): r["curves"] for r in sorted(records, key=lambda r: r["fold"])
            if r.get("model") == model and not r.get("control") and not r.get("repeat")
            and r.get("curves")}


def curves_png(model: str, by_fold: dict[int, dict[str, list[float]]]) -> bytes:
    """Two panels (loss, accuracy); per fold a solid line on its training batches and a
    dashed one on its held-out images, in the fold's colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    colours = plt.get_cmap("tab10")
    for ax, (metric, label) in zip(axes, PANELS, strict=True):
        for i, (fold, curves) in enumerate(by_fold.items()):
            for key, style, where in ((metric, "-", "train"), (f"val_{metric}", "--", "held out")):
                values = curves.get(key) or []
                if values:
                    ax.plot(range(1, len(values) + 1), values, style, color=colours(i % 10),
                            label=f"fold {fold} {where}", linewidth=1.2)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2, loc="lower right")
    fig.suptitle(f"{model}: head training per fold (solid: training batches, dashed: the "
                 "held-out fold)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_curves(records: list[dict[str, Any]], results_uri: str) -> dict[str, str]:
    """Write ``curves.png`` of every model whose records have curves; return their URIs."""
    uris = {}
    for model in sorted({r.get("model") for r in records if r.get("curves")}):
        by_fold = fold_curves(records, str(model))
        if by_fold:
            uris[str(model)] = storage.write_bytes(layout.model_curves(results_uri, model),
                                                   curves_png(str(model), by_fold))
    return uris
