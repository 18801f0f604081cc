"""The acquisition-only baseline: acquisition facts only, the same folds, the same metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd

from covid_pipeline import baseline
from covid_pipeline import leaderboard as lb
from covid_pipeline.config import DataSettings, resolve_config
from covid_pipeline.dataset import prepare
from covid_pipeline.shards import read_parquet
from covid_pipeline.sources import SourceSpec


def test_baseline_on_the_real_samples_tells_the_sources_apart(shared_data, tmp_path):
    """On the study's data the file format alone separates the classes: the baseline,
    which never sees a lung, scores like a perfect classifier on the same folds."""
    info, _ = prepare([SourceSpec("ieee8023", str(shared_data / "ieee8023-2020-04")),
                       SourceSpec("rsna", str(shared_data / "rsna-pneumonia-format"))],
                      str(tmp_path), DataSettings(folds=3, image_size=64))
    cfg = resolve_config("smoke", repeats=2)
    records = baseline.train_baseline(info.uri, cfg, str(tmp_path))
    assert sorted((r["repeat"], r["fold"]) for r in records) == [(r, k) for r in (0, 1)
                                                                 for k in range(3)]
    manifest = read_parquet(info.manifest_uri).set_index("image_id")
    for r in records:
        preds = pd.read_parquet(r["predictions_uri"])
        assert len(preds) == r["n_test"] and set(preds["model"]) == {baseline.NAME}
        if r["repeat"] == 0:  # repeat 0 tests exactly the dataset's fold
            assert (manifest.loc[preds["image_id"], "fold"] == r["fold"]).all()
    assert np.mean([r["metrics"]["auc"] for r in records]) > 0.95
    features = baseline.acquisition_features(
        read_parquet(info.manifest_uri), baseline.intensity_histograms(info))
    assert len(features.columns) == 5 + 6 + baseline.HISTOGRAM_BINS  # nothing else


def test_the_board_says_when_the_baseline_reaches_the_top_tier():
    ctx = lb.LeaderboardContext("v", "patient", {"COVID-19": 2, "normal": 2}, "c", "t", 2, {})

    def rec(model, fold, probs):
        from covid_pipeline.metrics import fold_metrics

        return {"model": model, "fold": fold, "n_test": 4, "timing": {"train_seconds": 0},
                "metrics": fold_metrics([1, 1, 0, 0], probs)}

    records = [rec(baseline.NAME, k, [0.9, 0.8, 0.1, 0.2]) for k in (0, 1)]
    records += [rec("VGG16", k, [0.9, 0.4, 0.6, 0.2]) for k in (0, 1)]
    table = lb.build(records, {}, ["VGG16", baseline.NAME], ctx)
    assert table.loc[0, "model"] == baseline.NAME
    md = lb.to_markdown(table, ctx)
    assert f"**The {baseline.NAME} ranks above every CNN**" in md
    # the comparisons are with the best CNN: the baseline itself gets p-values
    assert table.set_index("model").loc["VGG16", "tied_with_best"]
    assert not np.isnan(table.set_index("model").loc[baseline.NAME, "balanced_accuracy_p"])
    records = [rec(baseline.NAME, k, [0.1, 0.2, 0.8, 0.9]) for k in (0, 1)] + records[2:]
    assert "acquisition, not the disease" not in lb.to_markdown(
        lb.build(records, {}, ["VGG16", baseline.NAME], ctx), ctx)


def test_a_rerun_decodes_only_the_images_its_histogram_cache_lacks(synth_root, tmp_path,
                                                                   monkeypatch):
    """The baseline's histograms are kept by sha256 under ``cache/``: a re-run decodes
    only new images, with the same histograms and baseline results as without the cache."""
    from covid_pipeline import layout, storage

    info, _ = prepare([SourceSpec("ieee8023", str(synth_root / "ieee8023")),
                       SourceSpec("rsna", str(synth_root / "rsna"))],
                      str(tmp_path), DataSettings(folds=3, image_size=64))
    cfg = resolve_config("smoke")
    decoded: list[bytes] = []
    real = baseline.histogram
    monkeypatch.setattr(baseline, "histogram", lambda png: decoded.append(png) or real(png))
    want = baseline.intensity_histograms(info)  # no cache: every image, the reference
    n = len(want)
    assert len(decoded) == n > 10

    def run() -> tuple[int, list]:
        decoded.clear()
        records = baseline.train_baseline(info.uri, cfg, str(tmp_path))
        preds = [read_parquet(r["predictions_uri"]) for r in records]
        return len(decoded), [(r["metrics"], p) for r, p in zip(records, preds, strict=True)]

    cold, reference = run()
    assert cold == n
    cache = layout.intensity_histograms(str(tmp_path), 64)
    assert storage.exists(cache)
    warm, again = run()
    assert warm == 0
    shas = read_parquet(info.manifest_uri).set_index("image_id")["sha256"]
    kept = baseline.read_histograms(cache)
    for image_id, hist in want.items():
        np.testing.assert_array_equal(kept[shas[image_id]], hist)
    for (m1, p1), (m2, p2) in zip(reference, again, strict=True):
        assert m1 == m2
        pd.testing.assert_frame_equal(p1, p2)
    # an image the cache lacks (as after adding one): that one is decoded
    dropped = shas.iloc[0]
    baseline.write_histograms(cache, {s: h for s, h in kept.items() if s != dropped})
    assert run()[0] == 1
    assert dropped in baseline.read_histograms(cache)
    # a row that is no histogram is not trusted: that image is decoded again
    kept = baseline.read_histograms(cache)
    baseline.write_histograms(cache, {**kept, dropped: np.full(baseline.HISTOGRAM_BINS,
                                                               np.nan)})
    assert dropped not in baseline.read_histograms(cache) and run()[0] == 1
    # a table made otherwise (another decoder or Pillow version) or damaged is not
    # trusted: everything is decoded again, with the same results
    with monkeypatch.context() as patch:
        patch.setattr(baseline, "histograms_fingerprint", lambda: "another decoder")
        baseline.write_histograms(cache, kept)
    assert baseline.read_histograms(cache) == {}
    assert run()[0] == n
    storage.write_bytes(cache, b"not parquet")
    damaged, after = run()
    assert damaged == n and [m for m, _ in after] == [m for m, _ in reference]


def test_the_intensity_histogram_equals_numpys_of_the_decoded_image():
    from covid_pipeline import imaging

    rng = np.random.default_rng(1)
    for shape in ((64, 64), (33, 50), (1, 1)):
        pixels = rng.integers(0, 256, shape).astype(np.uint8)
        pixels.flat[0] = 255  # the top edge of the last bin
        want = np.histogram(pixels, bins=baseline.HISTOGRAM_BINS, range=(0, 256))[0]
        np.testing.assert_array_equal(baseline.histogram(imaging.encode_png(pixels)),
                                      want / pixels.size)
