"""The feature-cache benchmark with the ``paper`` preset, for a GPU machine.

Same measurements as ``feature_cache.py`` (limit, online, cached, cached K, ratios,
largest metric and probability differences), at the paper's input sizes, 120 epochs and
ImageNet weights by default. On a lent device:

    python benchmarks/paper_gpu.py --models ResNet50,DenseNet121,EfficientNetB0 \\
        --json "$OUT/paper_gpu.json"

Use ``--weights none`` where the weights cannot be fetched (no network there).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from feature_cache import main  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    defaults = {"--preset": "paper", "--epochs": "120", "--weights": "imagenet",
                "--models": "ResNet50,DenseNet121,EfficientNetB0"}
    for flag, value in defaults.items():
        if flag not in args:
            args += [flag, value]
    sys.exit(main(args))
