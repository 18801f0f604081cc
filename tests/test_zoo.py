"""The model table: contents, lookup, preprocessing, weights cache and (slow) real builds."""

from __future__ import annotations

import gc
import subprocess
import sys
import warnings

import numpy as np
import pytest

from covid_pipeline import backbones, weights, zoo
from covid_pipeline.errors import ConfigError

# Table I of the study: 26 distinct architectures and their input sizes.
TABLE_I = {
    "InceptionV3": 299,
    "ResNet152V2": 299,
    "DenseNet121": 224,
    "DenseNet169": 224,
    "DenseNet201": 224,
    **{f"EfficientNetB{i}": 224 for i in range(8)},
    "MobileNet": 224,
    "ResNet50": 224,
    "ResNet101V2": 299,
    "VGG19": 224,
    "Xception": 299,
    "MobileNetV2": 224,
    "ResNet101": 224,
    "ResNet152": 224,
    "InceptionResNetV2": 299,
    "NASNetLarge": 331,
    "NASNetMobile": 224,
    "ResNet50V2": 224,
    "VGG16": 224,
}
SELF_NORMALISING = {f"EfficientNetB{i}" for i in range(8)} | {
    "ConvNeXtTiny",
    "EfficientNetV2B0",
    "MobileNetV3Small",
    "MobileNetV3Large",
}


def test_paper_models_are_table_one() -> None:
    paper = zoo.paper_models()
    assert len(paper) == 26
    assert len({s.name for s in paper}) == 26
    assert {s.name: s.input_size for s in paper} == TABLE_I


def test_table_rows_are_consistent() -> None:
    names = [s.name.lower() for s in zoo.all_models()]
    assert len(names) == len(set(names))
    assert any(not s.paper for s in zoo.all_models())
    for spec in zoo.all_models():
        assert spec.constructor == f"keras.applications.{spec.name}"
        assert spec.gmacs > 0 and spec.features > 0
        assert spec.weights_url.startswith("https://storage.googleapis.com/")
        assert spec.weights_file.endswith(".h5") and "/" not in spec.weights_file
        assert zoo.feature_width(spec) == spec.features
        assert (spec.preprocess == "none") == (spec.name in SELF_NORMALISING), spec.name


def test_import_does_not_load_tensorflow() -> None:
    code = (
        "import sys, covid_pipeline.zoo as z, covid_pipeline.config as c\n"
        "z.all_models(); c.load_preset('paper')\n"
        "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_get_is_case_insensitive() -> None:
    assert zoo.get("resnet50").name == "ResNet50"
    assert zoo.get("  MOBILENETV2 ") is zoo.get("MobileNetV2")
    assert zoo.get("nasnetlarge").input_size == 331


def test_get_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(ConfigError) as err:
        zoo.get("resnet51")
    message = str(err.value)
    assert "\n" not in message
    assert "'resnet51'" in message and "ResNet50" in message
    with pytest.raises(ConfigError, match="unknown model 'zzz' \\("):
        zoo.get("zzz")


def test_gmacs_scale_with_pixels() -> None:
    spec = zoo.get("MobileNetV2")
    assert zoo.gmacs_at(spec) == spec.gmacs
    assert zoo.gmacs_at(spec, 112) == pytest.approx(spec.gmacs / 4)


def test_weights_ref_follows_keras_size_variants() -> None:
    v2, v1, r50 = zoo.get("MobileNetV2"), zoo.get("MobileNet"), zoo.get("ResNet50")
    file, url, _ = zoo.weights_ref(v2, 96)
    assert file == "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5"
    assert url.endswith("/" + file)
    # Keras has no 96 px MobileNet (v1) weights: it loads the 224 file.
    assert zoo.weights_ref(v1, 96)[0] == "mobilenet_1_0_224_tf_no_top.h5"
    assert zoo.weights_ref(v1, 160)[0] == "mobilenet_1_0_160_tf_no_top.h5"
    assert zoo.weights_ref(r50, 96) == zoo.weights_ref(r50)


def test_weights_status(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home"))
    assert weights.keras_models_dir() == tmp_path / "home" / "models"
    cache = tmp_path / "home" / "models"
    cache.mkdir(parents=True)
    (cache / zoo.get("VGG16").weights_file).write_bytes(b"x")
    (cache / zoo.get("VGG19").weights_file).write_bytes(b"")  # truncated download
    status = weights.weights_status(["vgg16", "VGG19", "ResNet50"])
    assert status == {"VGG16": cache / zoo.get("VGG16").weights_file, "VGG19": None,
                      "ResNet50": None}
    other = tmp_path / "shared"
    other.mkdir()
    (other / zoo.get("ResNet50").weights_file).write_bytes(b"x")
    assert weights.weights_status("ResNet50,VGG16", cache_dir=other) == {
        "ResNet50": other / zoo.get("ResNet50").weights_file,
        "VGG16": None,
    }
    with pytest.raises(ConfigError):
        weights.weights_status(["NoSuchNet"])


def test_preprocess_identity_where_model_normalises() -> None:
    x = np.full((1, 8, 8, 3), 200.0, dtype=np.float32)
    for name in SELF_NORMALISING:
        assert backbones.preprocess_fn(zoo.get(name))(x) is x


def test_preprocess_applies_keras_function_without_mutating_input() -> None:
    x = np.full((1, 4, 4, 3), 255.0, dtype=np.float32)
    out = backbones.preprocess_fn(zoo.get("MobileNetV2"))(x)
    np.testing.assert_allclose(np.asarray(out), 1.0)
    assert float(x.max()) == 255.0
    caffe = np.asarray(backbones.preprocess_fn(zoo.get("ResNet50"))(x))
    np.testing.assert_allclose(caffe[0, 0, 0], [255 - 103.939, 255 - 116.779, 255 - 123.68],
                               rtol=1e-5)
    torch = np.asarray(backbones.preprocess_fn(zoo.get("DenseNet121"))(x))
    np.testing.assert_allclose(torch[0, 0, 0], (1 - np.array([0.485, 0.456, 0.406]))
                               / np.array([0.229, 0.224, 0.225]), rtol=1e-5)


# The keras.applications module whose preprocess_input each family's table mode must equal.
KERAS_PREPROCESS = {
    "resnet": "resnet", "resnet_v2": "resnet_v2", "densenet": "densenet", "vgg": None,
    "inception_v3": "inception_v3", "mobilenet": "mobilenet", "mobilenet_v2": "mobilenet_v2",
    "xception": "xception", "inception_resnet_v2": "inception_resnet_v2", "nasnet": "nasnet",
    "efficientnet": "efficientnet", "efficientnet_v2": "efficientnet_v2",
    "convnext": "convnext", "mobilenet_v3": "mobilenet_v3",
}


def test_preprocess_mode_equals_each_models_own_keras_preprocess_input() -> None:
    import importlib

    x = np.random.default_rng(0).uniform(0, 255, (2, 6, 6, 3)).astype("float32")
    for spec in zoo.all_models():
        module = KERAS_PREPROCESS[spec.family] or spec.name.lower()  # vgg16 / vgg19
        reference = importlib.import_module(f"keras.applications.{module}").preprocess_input
        expected = np.asarray(reference(x.copy()))
        np.testing.assert_allclose(np.asarray(backbones.preprocess_fn(spec)(x)), expected,
                                   rtol=1e-6, atol=1e-5, err_msg=spec.name)


def test_every_constructor_and_preprocess_resolves() -> None:
    import keras

    for spec in zoo.all_models():
        assert callable(getattr(keras.applications, spec.name))
        assert callable(backbones.preprocess_fn(spec))


def test_build_backbone_rejects_missing_weights_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        backbones.build_backbone(zoo.get("MobileNet"), str(tmp_path / "nope.h5"))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # TF's __array__ on get_weights()
def test_build_backbone_loads_a_weights_file(tmp_path) -> None:
    import keras

    spec = zoo.get("MobileNet")
    first = backbones.build_backbone(spec, "none", input_size=32)
    path = tmp_path / "mobilenet.weights.h5"
    first.save_weights(path)
    keras.backend.clear_session()
    second = backbones.build_backbone(spec, path, input_size=32)
    assert second.input_shape == (None, 32, 32, 3)
    for a, b in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    keras.backend.clear_session()


@pytest.fixture
def fresh_keras():
    import keras

    keras.backend.clear_session()
    gc.collect()
    yield keras
    keras.backend.clear_session()
    gc.collect()


@pytest.mark.slow
@pytest.mark.parametrize("name", [s.name for s in zoo.all_models()])
def test_build_every_model(name: str, fresh_keras) -> None:
    spec = zoo.get(name)
    model = backbones.build_backbone(spec, weights=None)
    size = spec.input_size
    assert model.input_shape == (None, size, size, 3)
    assert model.output_shape == (None, zoo.feature_width(spec))
    # The extraction path itself: grey images, rotation, the model's preprocessing, the
    # backbone, traced as in extract_features (autograph off).
    from covid_pipeline.backbone_cache import feature_function, maps_function

    forward = feature_function(model, backbones.preprocess_fn(spec))
    grey = np.random.default_rng(0).uniform(0, 255, (2, size, size, 1)).astype("float32")
    feats = forward(grey, np.array([0.0, 0.5], np.float32)).numpy()
    assert feats.shape == (2, zoo.feature_width(spec)) and feats.dtype == np.float32
    assert np.isfinite(feats).all()
    # Grad-CAM's panel path: the un-rotated view's last feature map, whose spatial mean
    # (through ConvNeXt's final LayerNormalization) is the pooled features (what
    # gradcam.pooled_heatmaps relies on)
    from covid_pipeline.backbone_cache import after_pooling

    maps = maps_function(model, backbones.preprocess_fn(spec))(grey).numpy()
    assert maps.ndim == 4 and maps.shape[1] > 1
    pooled = np.asarray(after_pooling(model, maps[:1].mean(axis=(1, 2))))
    np.testing.assert_allclose(pooled, feats[:1], rtol=1e-4, atol=1e-4 * np.abs(feats).max())


class _Requested(Exception):
    """Raised by the stubbed get_file: carries what Keras asked to download."""


# One cheap model per Keras naming code path, plus the size-specific MobileNet files.
# (Every row was checked this way when the table was written; this guards Keras upgrades.)
_WEIGHTS_PROBES = [
    (name, None)
    for name in ("InceptionV3", "ResNet50", "ResNet50V2", "DenseNet121", "EfficientNetB0",
                 "MobileNet", "MobileNetV2", "VGG16", "VGG19", "Xception", "InceptionResNetV2",
                 "NASNetMobile", "ConvNeXtTiny", "EfficientNetV2B0", "MobileNetV3Small")
] + [("MobileNet", 96), ("MobileNetV2", 96), ("MobileNetV2", 160)]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "size"), _WEIGHTS_PROBES)
def test_weights_metadata_matches_keras(name: str, size: int | None, fresh_keras,
                                        monkeypatch) -> None:
    """Keras requests exactly the table's file, URL and hash (nothing is downloaded)."""
    from keras.src.utils import file_utils

    def requested(fname=None, origin=None, **kwargs):
        raise _Requested(fname, origin, kwargs.get("file_hash"), kwargs.get("cache_subdir"))

    monkeypatch.setattr(file_utils, "get_file", requested)
    spec = zoo.get(name)
    with warnings.catch_warnings(), pytest.raises(_Requested) as got:
        warnings.simplefilter("ignore")  # MobileNet at 96 px warns that it loads 224 weights
        backbones.build_backbone(spec, "imagenet", input_size=size)
    assert got.value.args == (*zoo.weights_ref(spec, size), "models")
