"""Grad-CAM on an exported-style model (input pipeline + nested backbone + head)."""

from __future__ import annotations

import numpy as np
import pytest

from covid_pipeline.config import resolve_config
from covid_pipeline.synth import chest_image

CFG = resolve_config("smoke", weights="none", input_size=64)


@pytest.fixture(scope="module")
def net():
    from covid_pipeline import export

    cfg = CFG
    rng = np.random.default_rng(0)
    head = [rng.normal(0, 0.1, (512, 64)).astype("float32"), np.zeros(64, "float32"),
            rng.normal(0, 0.3, (64, 2)).astype("float32"), np.zeros(2, "float32")]
    return export.build_model(cfg, "VGG16", 96, head)


def radiograph(seed: int, covid: bool) -> np.ndarray:
    from covid_pipeline import imaging

    return imaging.normalise(chest_image(np.random.default_rng(seed), (120, 120), covid), 96)


def test_heat_maps_are_not_constant_and_follow_the_image(net):
    from covid_pipeline import gradcam

    images = np.stack([radiograph(1, True), radiograph(2, False)])[..., None]
    cams, scores = gradcam.heatmaps(net, images)
    assert cams.shape[0] == 2 and cams.ndim == 3
    np.testing.assert_allclose(scores, np.asarray(net.predict(images, verbose=0))[:, 1],
                               atol=1e-5)
    for cam in cams:
        assert cam.min() >= 0 and cam.max() == pytest.approx(1.0) and np.ptp(cam) > 0.1
    assert np.abs(cams[0] - cams[1]).max() > 0.05
    same, _ = gradcam.heatmaps(net, images[:1])
    np.testing.assert_allclose(same[0], cams[0], atol=1e-5)  # per image, not per batch
    png = gradcam.panel_png([images[0, ..., 0], images[1, ..., 0]], list(cams), ["a", "b"])
    assert png[:4] == b"\x89PNG"


def test_the_panels_path_gives_the_exported_models_heat_maps(net):
    """A panel's maps come from the worker's kept backbone (the extraction's pass, un-rotated
    view) and its channel weights from the head alone; the reference is the keras.io method
    on the exported model (gradient through the nested backbone's graph)."""
    import keras

    from covid_pipeline import backbone_cache, gradcam
    from covid_pipeline.features import resize_all

    images = np.stack([radiograph(s, s % 2 == 0) for s in range(3, 8)])[..., None]
    want_cams, want_scores = gradcam.heatmaps(net, images)
    pipeline, backbone, head = gradcam.parts(net)
    to_maps = keras.Model(backbone.inputs, backbone.layers[-1].input)
    maps = to_maps(pipeline(images.astype("float32"))).numpy()
    cams, scores = gradcam.pooled_heatmaps(maps, head)
    np.testing.assert_allclose(cams, want_cams, atol=1e-5)
    np.testing.assert_allclose(scores, want_scores, atol=1e-6)

    backbone_cache.forget()
    kept = backbone_cache.backbone("VGG16", CFG, "float32")
    kept_maps = kept.maps(resize_all(images, 64, 8)).numpy()
    with pytest.raises(ValueError, match="64"):  # eager, still refused by Keras' input check
        kept.maps(resize_all(images, 32, 8))
    np.testing.assert_allclose(kept_maps, maps, rtol=1e-4, atol=1e-4 * np.abs(maps).max())
    cams, scores = gradcam.pooled_heatmaps(kept_maps, head)
    np.testing.assert_allclose(cams, want_cams, atol=1e-3)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    assert np.ptp(want_cams) > 0.1 and np.abs(want_cams[0] - want_cams[1]).max() > 0.05
    backbone_cache.forget()


def test_the_pooled_method_follows_layers_after_the_pooling():
    """ConvNeXt normalises its pooled features (a LayerNormalization after the pooling):
    the pooled method goes through it and still equals the full gradient method."""
    import keras

    from covid_pipeline import export, gradcam

    rng = np.random.default_rng(1)
    head = [rng.normal(0, 0.1, (768, 64)).astype("float32"), np.zeros(64, "float32"),
            rng.normal(0, 0.3, (64, 2)).astype("float32"), np.zeros(2, "float32")]
    net = export.build_model(CFG, "ConvNeXtTiny", 96, head)
    images = np.stack([radiograph(s, s % 2 == 0) for s in range(2)])[..., None]
    want_cams, want_scores = gradcam.heatmaps(net, images)
    pipeline, backbone, head_model = gradcam.parts(net)
    pooling = next(layer for layer in backbone.layers if "pool" in layer.name)
    maps = keras.Model(backbone.inputs, pooling.input)(pipeline(images.astype("float32")))
    cams, scores = gradcam.pooled_heatmaps(np.asarray(maps), head_model, backbone)
    np.testing.assert_allclose(scores, want_scores, atol=1e-6)
    np.testing.assert_allclose(cams, want_cams, atol=1e-5)
    assert backbone.layers[-1] is not pooling  # the case under test
    keras.backend.clear_session()


def test_outside_share_is_the_mass_outside_the_controls_central_box():
    from covid_pipeline import gradcam

    corner = np.zeros((8, 8))
    corner[0, 0] = 1.0
    centre = np.zeros((8, 8))
    centre[3:5, 3:5] = 1.0
    assert gradcam.outside_share(corner, 0.6, 80) > 0.95
    assert gradcam.outside_share(centre, 0.6, 80) < 0.05
    assert gradcam.outside_share(np.ones((8, 8)), 0.6, 80) == pytest.approx(1 - 0.6 ** 2,
                                                                             abs=0.02)
    assert gradcam.outside_share(np.zeros((8, 8)), 0.6, 80) is None


def test_the_panel_spreads_over_classes_and_right_and_wrong_predictions():
    import pandas as pd

    from covid_pipeline import gradcam

    preds = pd.DataFrame({"image_id": [f"i{k:02d}" for k in range(20)],
                          "label": [1] * 10 + [0] * 10,
                          "prob_covid": [0.9] * 8 + [0.1] * 2 + [0.2] * 9 + [0.8]})
    chosen = gradcam.choose(preds, 8, seed=0)
    right = (chosen["prob_covid"] > 0.5).astype(int) == chosen["label"]
    groups = chosen.assign(right=right).groupby(["label", "right"]).size().to_dict()
    assert groups == {(1, True): 3, (1, False): 2, (0, True): 2, (0, False): 1}
    assert chosen["image_id"].is_unique
    assert gradcam.choose(preds, 8, seed=0).equals(chosen)  # seeded
    assert len(gradcam.choose(preds, 50, seed=0)) == 20
