"""Small image-file factories for tests."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def grey(h: int = 128, w: int = 96, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def add_covid_images(root, count: int, seed: int, first_patient: int, per_patient: int = 1,
                     prefix: str = "added") -> None:
    """Add ``count`` COVID-19 PNGs and their metadata rows to an ieee8023 layout at ``root``."""
    import pandas as pd

    from covid_pipeline.imaging import encode_png
    from covid_pipeline.synth import chest_image

    meta = root / "ieee8023" / "metadata.csv"
    rows = pd.read_csv(meta, dtype=str, keep_default_na=False)
    rng = np.random.default_rng(seed)
    extra = []
    for i in range(count):
        name = f"{prefix}-{i}.png"
        png = encode_png(chest_image(rng, (96, 96), covid=True))
        (root / "ieee8023" / "images" / name).write_bytes(png)
        extra.append({**rows.iloc[0].to_dict(), "Patientid": str(first_patient + i // per_patient),
                      "filename": name})
    pd.concat([rows, pd.DataFrame(extra)]).to_csv(meta, index=False)
