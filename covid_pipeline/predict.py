"""Predict with an exported model on image files: decoded and normalised by the ingest's
own code (PNG, JPEG, 8/16-bit, DICOM incl. JPEG baseline); a bad file gets its reason and
the others are still predicted."""

from __future__ import annotations

import os
import posixpath
import tempfile
from dataclasses import asdict, dataclass

import numpy as np

from covid_pipeline import export, gradcam, imaging, storage
from covid_pipeline.errors import ConfigError
from covid_pipeline.sources.folder import SUFFIXES

BATCH = 16  # images decoded and held at once


@dataclass
class Prediction:
    path: str
    prob_covid: float | None = None
    label: str | None = None
    error: str | None = None
    gradcam: str | None = None

    def line(self) -> str:
        if self.error:
            return f"{self.path}\tFAILED\t{self.error}"
        return f"{self.path}\t{self.prob_covid:.4f}\t{self.label}"

    def as_dict(self) -> dict:
        return asdict(self)


def expand(inputs: list[str]) -> list[str]:
    """Files as given, and the image files under each folder (sorted)."""
    out: list[str] = []
    for item in inputs:
        fs, path = storage.filesystem(item)
        if fs.isdir(path):
            found = sorted(u for u in storage.list_files(item)
                           if posixpath.splitext(u)[1].lower() in SUFFIXES)
            if not found:
                raise ConfigError(f"{item}: a folder without image files ({', '.join(SUFFIXES)})")
            out.extend(found)
        else:
            out.append(item)
    return out


def normalised(path: str, size: int) -> np.ndarray:
    """The file's pixels as ingest normalises them, or :class:`imaging.ImageRejected`."""
    try:
        data = storage.read_bytes(path)
    except (OSError, storage.StorageError) as exc:
        raise imaging.ImageRejected("unreadable", str(exc)) from exc
    return imaging.normalise(imaging.decode(data).pixels, size)


def load(model_file: str):
    """The exported Keras model (this package's input layer registered)."""
    import keras

    export.input_layer()  # registered before the file names it
    try:
        if storage.is_local(model_file):
            return keras.saving.load_model(storage.local_path(model_file))
        with tempfile.TemporaryDirectory(prefix="covid-model-") as tmp:  # never a stale copy
            local = os.path.join(tmp, "model.keras")
            with open(local, "wb") as fh:
                fh.write(storage.read_bytes(model_file))
            return keras.saving.load_model(local)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{model_file}: not a model `covid-pipeline export` wrote "
                          f"({str(exc).splitlines()[0]})") from None


def predict(model_file: str, inputs: list[str], gradcam: str | None = None
            ) -> tuple[list[Prediction], object]:
    """A prediction (or the reason it failed) per file, in order; and the model.
    ``gradcam``: a folder for each predicted file's Grad-CAM overlay (``<name>.gradcam.png``).
    """
    net = load(model_file)
    size = int(net.input_shape[1])
    results = [Prediction(p) for p in expand(inputs)]
    for start in range(0, len(results), BATCH):
        chunk, pixels = [], []
        for res in results[start : start + BATCH]:
            try:
                pixels.append(normalised(res.path, size))
                chunk.append(res)
            except imaging.ImageRejected as exc:
                res.error = f"{exc.reason}: {exc.detail}"
        if chunk:
            probs = np.asarray(net.predict_on_batch(np.stack(pixels)[..., None]
                                                    .astype(np.float32)))[:, 1]
            for res, p in zip(chunk, probs, strict=True):
                res.prob_covid = float(p)
                res.label = "COVID-19" if p > 0.5 else "normal"
            if gradcam:
                write_overlays(net, chunk, pixels, gradcam)
    return results, net


def write_overlays(net, chunk: list[Prediction], pixels: list[np.ndarray], folder: str) -> None:
    cams, _ = gradcam.heatmaps(net, np.stack(pixels)[..., None])
    for res, image, cam in zip(chunk, pixels, cams, strict=True):
        name = posixpath.basename(res.path.rstrip("/"))
        res.gradcam = storage.write_bytes(
            f"{folder.rstrip('/')}/{name}.gradcam.png",
            gradcam.overlay_png(image, cam, f"{name}: {res.label} (p={res.prob_covid:.3f})"))
