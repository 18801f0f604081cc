"""Backbone throughput of the model table on one accelerator, and what it means for a run.

The backbone forward pass is the only heavy work of a benchmark run (the head is tiny).
For each model of a preset, at the model's own input size, this measures in one run:

- build seconds (random weights: nothing is downloaded) and first-call compile seconds;
- peak throughput (images/s) of the compiled forward pass on one in-memory batch, under
  ``mixed_float16`` (what the pipeline uses on GPUs) and, for ``--float32-models``, under
  ``float32`` too;
- the backbone seconds that ``online`` and ``cached`` (views = epochs) need for the
  preset's data set: passes / throughput, passes from :mod:`covid_pipeline.features`'
  counting (``online``: folds x epochs x train images + N; ``cached``: N x (epochs + 1));
- the makespan lower bound of the cost-aware schedule on ``--gpus`` GPUs.

It uses only Keras and the model table, so it runs on any Keras 3 backend: where
TensorFlow cannot be installed (the lent device has no network, and TensorFlow's wheel is
far above what can be carried), ``KERAS_BACKEND=jax`` measures the same Keras models on
the same GPU through XLA::

    KERAS_BACKEND=jax python benchmarks/backbone_gpu.py --json "$OUT/backbones.json"

Models are measured in table order until ``--deadline`` seconds have passed; the JSON file
is rewritten after every model, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from covid_pipeline import backbones, zoo  # noqa: E402
from covid_pipeline.config import resolve_config  # noqa: E402


def measure(spec: zoo.ModelSpec, policy: str, batch: int, seconds: float) -> dict:
    """Build, compile and time one backbone under one dtype policy."""
    import keras
    import numpy as np

    keras.mixed_precision.set_global_policy(policy)
    try:
        t0 = time.perf_counter()
        model = backbones.build_backbone(spec, None, input_size=spec.input_size)
        built = time.perf_counter() - t0
        size = spec.input_size
        x = backbones.preprocess_fn(spec)(np.random.default_rng(0).uniform(
            0, 255, (batch, size, size, 3)).astype("float32"))
        t0 = time.perf_counter()
        y = np.asarray(model.predict_on_batch(x))
        compiled = time.perf_counter() - t0
        if not np.isfinite(y.astype("float32")).all():
            raise FloatingPointError(f"{spec.name} gave non-finite features under {policy}")
        n, t0 = 0, time.perf_counter()
        while n == 0 or time.perf_counter() - t0 < seconds:
            np.asarray(model.predict_on_batch(x))  # to host: the step has finished
            n += batch
        rate = n / (time.perf_counter() - t0)
        return {"build_s": built, "compile_s": compiled, "images_per_s": rate,
                "features": int(y.shape[-1])}
    finally:
        keras.mixed_precision.set_global_policy("float32")
        keras.backend.clear_session()


def passes(images: int, folds: int, epochs: int) -> dict[str, int]:
    """Backbone passes of online and cached (views = epochs) for one model."""
    train = images - images // folds  # every fold trains on about (folds - 1) / folds
    return {"online": folds * epochs * train + images, "cached": images * (epochs + 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="paper")
    p.add_argument("--models", default=None, help="comma-separated (default: the preset's)")
    p.add_argument("--float32-models", default="ResNet50,DenseNet121,EfficientNetB0")
    p.add_argument("--images", type=int, default=360, help="the study's 180 + 180")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seconds", type=float, default=1.5, help="timing per measurement")
    p.add_argument("--gpus", type=int, default=8, help="for the makespan lower bound")
    p.add_argument("--deadline", type=float, default=420.0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import keras

    cfg = resolve_config(args.preset, **({"models": args.models} if args.models else {}))
    f32 = set(filter(None, args.float32_models.split(",")))
    counts = passes(args.images, cfg.folds, cfg.epochs)
    start = time.perf_counter()
    rows: list[dict] = []
    report = {"backend": keras.backend.backend(), "preset": cfg.name, "images": args.images,
              "folds": cfg.folds, "epochs": cfg.epochs, "batch": args.batch,
              "passes_per_model": counts, "rows": rows}
    print(f"backend {report['backend']}, preset {cfg.name}: {args.images} images, "
          f"{cfg.folds} folds, {cfg.epochs} epochs, passes/model {counts}", flush=True)
    for name in cfg.models:
        if time.perf_counter() - start > args.deadline:
            print(f"deadline reached; not measured: {name} and later", flush=True)
            break
        spec = zoo.get(name)
        row: dict = {"model": name, "input_size": spec.input_size, "gmacs": spec.gmacs}
        for policy in ("mixed_float16", *(["float32"] if name in f32 else [])):
            try:
                row[policy] = measure(spec, policy, args.batch, args.seconds)
            except Exception as exc:  # noqa: BLE001 - record and go on to the next model
                row[policy] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        rate = row["mixed_float16"].get("images_per_s")
        if rate:
            row["online_s"] = counts["online"] / rate
            row["cached_s"] = counts["cached"] / rate
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
    done = [r for r in rows if "cached_s" in r]
    if done:
        total = sum(r["cached_s"] for r in done)
        report["cached_total_s"] = total
        report["online_total_s"] = sum(r["online_s"] for r in done)
        report["makespan_lower_bound_s"] = max(total / args.gpus,
                                               max(r["cached_s"] for r in done))
        print(f"{len(done)} models: cached backbone time {total:.0f} s, online "
              f"{report['online_total_s']:.0f} s on one GPU; lower bound on {args.gpus} GPUs "
              f"{report['makespan_lower_bound_s']:.0f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
