"""Export and predict on the real samples: one Keras file whose probabilities are the
pipeline's, a model card, and predict on DICOM, 16-bit PNG, a corrupt file and a folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covid_pipeline import imaging, layout, storage

pytestmark = pytest.mark.slow


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True,
                          text=True, timeout=900,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


@pytest.fixture(scope="module")
def exported(shared_data, tmp_path_factory) -> dict:
    """A smoke benchmark (VGG16, random weights) on ../shared/data, then its export."""
    out = tmp_path_factory.mktemp("bench")
    proc = cli("run", "--preset", "smoke", "--weights", "none", "--models", "VGG16",
               "--control-models", "none", "--cluster", "threads",
               "--source", f"ieee8023={shared_data / 'ieee8023-2020-04'}",
               "--source", f"rsna={shared_data / 'rsna-pneumonia-format'}", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    version = proc.stdout.split("dataset version: ")[1].split()[0]
    config_hash = proc.stdout.split("config: ")[1].split()[0]
    results = layout.results(str(out), version, config_hash)
    model_file = str(out / "export" / "vgg16.keras")
    proc = cli("export", "--results", results, "--model", "VGG16", "--out", model_file)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"out": out, "version": version, "results": results, "file": model_file,
            "stdout": proc.stdout}


def test_the_exported_model_gives_the_pipelines_probabilities(exported):
    """Exported file (input pipeline + backbone + head) on the dataset's normalised images
    = the same final head on the pipeline's cached view-0 features, within 1e-4."""
    import keras

    from covid_pipeline import export, predict
    from covid_pipeline.features import feature_source
    from covid_pipeline.head import build_head
    from covid_pipeline.shards import load_dataset, read_parquet
    from covid_pipeline.training import cached_features

    res = export.open_results(exported["results"])
    info = load_dataset(res.dataset_uri)
    images = read_parquet(info.images_uri(0))
    pixels = np.stack([imaging.decode_png(p) for p in images["png"]])[..., None]
    net = predict.load(exported["file"])  # registers the input layer, then Keras loads
    assert net.input_shape == (None, info.image_size, info.image_size, 1)
    exported_prob = np.asarray(net.predict(pixels.astype(np.float32), verbose=0))[:, 1]

    weights, made = export.final_head(res, "VGG16")  # trained the same way again
    head = build_head(res.cfg)
    head.build((None, 512))
    head.set_weights(weights)
    source = feature_source(res.out, "VGG16", res.cfg, info.image_size)
    feats = cached_features(source.root, images["sha256"].tolist(), 0, "VGG16")
    x = np.stack([feats[s][0] for s in images["sha256"]]).astype(np.float32)
    pipeline_prob = np.asarray(head(x, training=False))[:, 1]
    np.testing.assert_allclose(exported_prob, pipeline_prob, atol=1e-4)
    assert made["n_train_images"] == 44 and np.ptp(exported_prob) > 1e-3
    keras.backend.clear_session()

    card = storage.read_json(exported["file"].replace(".keras", ".card.json"))
    assert card["model"] == "VGG16" and card["dataset_version"] == exported["version"]
    assert card["training"]["weights_sha256"] == "random"
    assert 0 <= card["cv"]["metrics"]["auc"]["pooled"] <= 1
    assert any("rsna" in w for w in card["confounds"])
    assert "Research only" in Path(exported["file"].replace(".keras", ".card.md")).read_text()


def test_predict_dicom_16_bit_png_a_corrupt_file_and_a_folder(exported, shared_data, tmp_path):
    dicom = sorted((shared_data / "rsna-pneumonia-format" / "stage_2_train_images")
                   .glob("*.dcm"))[0]
    source = sorted((shared_data / "ieee8023-2020-04" / "images").glob("*.png"))[0]
    grey = np.asarray(Image.open(source).convert("L"), dtype=np.uint16) * 257
    png16 = tmp_path / "sixteen-bit.png"
    Image.fromarray(grey).save(png16)
    assert Image.open(png16).mode.startswith("I")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ("b.dcm", "a.dcm"):
        (folder / name).write_bytes(dicom.read_bytes())

    proc = cli("predict", exported["file"], str(dicom), str(png16), str(corrupt), str(folder),
               "--json")
    assert proc.returncode == 1, proc.stderr[-2000:]  # one file failed
    rows = json.loads(proc.stdout)
    assert [Path(r["path"]).name for r in rows] == [dicom.name, "sixteen-bit.png",
                                                    "corrupt.png", "a.dcm", "b.dcm"]
    bad = rows[2]
    assert bad["prob_covid"] is None and bad["error"].startswith(("corrupt", "not_an_image"))
    good = [r for r in rows if r["error"] is None]
    assert len(good) == 4 and all(0 <= r["prob_covid"] <= 1 for r in good)
    assert rows[0]["prob_covid"] == rows[3]["prob_covid"] == rows[4]["prob_covid"]
    # a 16-bit PNG is normalised like its 8-bit original
    same = cli("predict", exported["file"], str(source))
    assert same.returncode == 0
    assert float(same.stdout.split("\t")[1]) == pytest.approx(rows[1]["prob_covid"], abs=1e-4)
    lines = cli("predict", exported["file"], str(corrupt), str(dicom)).stdout.splitlines()
    assert lines[0].startswith(f"{corrupt}\tFAILED\t")
    path, prob, label = lines[1].split("\t")
    assert path == str(dicom) and 0 <= float(prob) <= 1 and label in ("COVID-19", "normal")
