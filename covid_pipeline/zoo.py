"""The model table: every backbone the benchmark knows, in one place.

Data only (no TensorFlow, no Keras): the CLI lists models from it. Building a backbone is
:mod:`covid_pipeline.backbones`; fetching and checking weights, :mod:`covid_pipeline.weights`.

Weight-file names, URLs and hashes are the ones Keras 3 itself requests for
``include_top=False, weights="imagenet"`` (checked by ``tests/test_zoo.py``), so a
cache filled by :func:`covid_pipeline.weights.download_weights` is found by Keras without a
network.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Literal

from covid_pipeline.errors import ConfigError

Preprocess = Literal["caffe", "tf", "torch", "none"]

_GCS = "https://storage.googleapis.com/tensorflow/keras-applications/"
_GCS_EFFNET = "https://storage.googleapis.com/keras-applications/"
_APPS = "keras.applications."


@dataclass(frozen=True)
class ModelSpec:
    """One backbone: how to build it, feed it and fetch its ImageNet weights.

    ``preprocess`` is the mode of Keras' ImageNet input normalisation for 0..255 RGB input
    (``caffe``: BGR minus the ImageNet mean; ``tf``: scaled to [-1, 1]; ``torch``: [0, 1]
    minus mean over std), or ``none`` where the model rescales inside itself. ``gmacs`` is
    the approximate backbone cost in GMACs at ``input_size``. ``weights_file``/``weights_url``/
    ``weights_hash`` describe the notop ImageNet weights at ``input_size``;
    ``size_variants`` lists input sizes for which Keras loads a size-specific file
    (the ``_224_`` in the name replaced by the size). ``features`` is the width of the
    globally average-pooled output.
    """

    name: str
    family: str
    constructor: str
    input_size: int
    preprocess: Preprocess
    gmacs: float
    weights_file: str
    weights_url: str
    paper: bool
    features: int
    weights_hash: str | None = None
    size_variants: tuple[int, ...] = ()


def _spec(
    name: str,
    family: str,
    size: int,
    preprocess: Preprocess,
    gmacs: float,
    features: int,
    url: str,
    weights_hash: str | None,
    *,
    file: str | None = None,
    paper: bool = True,
    size_variants: tuple[int, ...] = (),
) -> ModelSpec:
    """Table row helper: the cache file name defaults to the URL's last part."""
    return ModelSpec(
        name=name,
        family=family,
        constructor=_APPS + name,
        input_size=size,
        preprocess=preprocess,
        gmacs=gmacs,
        weights_file=file or url.rsplit("/", 1)[-1],
        weights_url=url,
        paper=paper,
        features=features,
        weights_hash=weights_hash,
        size_variants=size_variants,
    )


_TF = "_weights_tf_dim_ordering_tf_kernels_notop.h5"


def _resnet(name: str, size: int, gmacs: float, weights_hash: str) -> ModelSpec:
    v2 = name.endswith("V2")
    return _spec(
        name,
        "resnet_v2" if v2 else "resnet",
        size,
        "tf" if v2 else "caffe",
        gmacs,
        2048,
        f"{_GCS}resnet/{name.lower()}{_TF}",
        weights_hash,
    )


def _densenet(depth: int, gmacs: float, features: int, weights_hash: str) -> ModelSpec:
    url = f"{_GCS}densenet/densenet{depth}{_TF}"
    return _spec(f"DenseNet{depth}", "densenet", 224, "torch", gmacs, features, url,
                 weights_hash)


def _efficientnet(b: int, gmacs: float, features: int, weights_hash: str) -> ModelSpec:
    # The study ran every EfficientNet at 224, not at its native resolution.
    url = f"{_GCS_EFFNET}efficientnetb{b}_notop.h5"
    return _spec(f"EfficientNetB{b}", "efficientnet", 224, "none", gmacs, features, url,
                 weights_hash)


# Order follows Table I of the study; newer keras.applications models come last.
MODELS: tuple[ModelSpec, ...] = (
    _spec("InceptionV3", "inception_v3", 299, "tf", 5.7, 2048,
          f"{_GCS}inception_v3/inception_v3{_TF}", "bcbd6486424b2319ff4ef7d526e38f63"),
    _resnet("ResNet152V2", 299, 20.5, "ed17cf2e0169df9d443503ef94b23b33"),
    _densenet(121, 2.9, 1024, "30ee3e1110167f948a6b9946edeeb738"),
    _densenet(169, 3.4, 1664, "b8c4d4c20dd625c148057b9ff1c1176b"),
    _densenet(201, 4.3, 1920, "c13680b51ded0fb44dff2d8f86ac8bb1"),
    _efficientnet(0, 0.39, 1280, "50bc09e76180e00e4465e1a485ddc09d"),
    _efficientnet(1, 0.61, 1280, "74c4e6b3e1f6a1eea24c589628592432"),
    _efficientnet(2, 0.74, 1408, "111f8e2ac8aa800a7a99e3239f7bfb39"),
    _efficientnet(3, 1.0, 1536, "af6d107764bb5b1abb91932881670226"),
    _efficientnet(4, 1.46, 1792, "ebc24e6d6c33eaebbd558eafbeedf1ba"),
    _efficientnet(5, 2.39, 2048, "38879255a25d3c92d5e44e04ae6cec6f"),
    _efficientnet(6, 3.42, 2304, "9ecce42647a20130c1f39a5d4cb75743"),
    _efficientnet(7, 5.16, 2560, "cbcfe4450ddf6f3ad90b1b398090fe4a"),
    _spec("MobileNet", "mobilenet", 224, "tf", 0.57, 1024,
          f"{_GCS}mobilenet/mobilenet_1_0_224_tf_no_top.h5", None,
          size_variants=(128, 160, 192, 224)),
    _resnet("ResNet50", 224, 4.1, "4d473c1dd8becc155b73f8504c6f6626"),
    _resnet("ResNet101V2", 299, 13.9, "c0ed64b8031c3730f411d2eb4eea35b5"),
    _spec("VGG19", "vgg", 224, "caffe", 19.6, 512,
          f"{_GCS}vgg19/vgg19{_TF}", "253f8cb515780f3b799900260a226db6"),
    _spec("Xception", "xception", 299, "tf", 8.4, 2048,
          f"{_GCS}xception/xception{_TF}", "b0042744bf5b25fce3cb969f33bebb97"),
    _spec("MobileNetV2", "mobilenet_v2", 224, "tf", 0.30, 1280,
          f"{_GCS}mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
          None, size_variants=(96, 128, 160, 192, 224)),
    _resnet("ResNet101", 224, 7.8, "88cf7a10940856eca736dc7b7e228a21"),
    _resnet("ResNet152", 224, 11.5, "ee4c566cf9a93f14d82f913c2dc6dd0c"),
    _spec("InceptionResNetV2", "inception_resnet_v2", 299, "tf", 13.2, 1536,
          f"{_GCS}inception_resnet_v2/inception_resnet_v2{_TF}",
          "d19885ff4a710c122648d3b5c3b684e4"),
    _spec("NASNetLarge", "nasnet", 331, "tf", 23.8, 4032,
          f"{_GCS}nasnet/NASNet-large-no-top.h5", "d81d89dc07e6e56530c4e77faddd61b5",
          file="nasnet_large_no_top.h5"),
    _spec("NASNetMobile", "nasnet", 224, "tf", 0.56, 1056,
          f"{_GCS}nasnet/NASNet-mobile-no-top.h5", "1ed92395b5b598bdda52abe5c0dbfd63",
          file="nasnet_mobile_no_top.h5"),
    _resnet("ResNet50V2", 224, 4.1, "fac2f116257151a9d068a22e544a4917"),
    _spec("VGG16", "vgg", 224, "caffe", 15.5, 512,
          f"{_GCS}vgg16/vgg16{_TF}", "6d6bbae143d832006294945121d1f1fc"),
    # Newer architectures, not in the study. All three rescale inside the model.
    _spec("ConvNeXtTiny", "convnext", 224, "none", 4.5, 768,
          f"{_GCS}convnext/convnext_tiny_notop.h5",
          "d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1", paper=False),
    _spec("EfficientNetV2B0", "efficientnet_v2", 224, "none", 0.72, 1280,
          f"{_GCS}efficientnet_v2/efficientnetv2-b0_notop.h5",
          "893217f2bb855e2983157299931e43ff", paper=False),
    _spec("MobileNetV3Small", "mobilenet_v3", 224, "none", 0.06, 576,
          f"{_GCS}mobilenet_v3/weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
          "d3e8ec802a04aa4fc771ee12a9a9b836", paper=False),
    _spec("MobileNetV3Large", "mobilenet_v3", 224, "none", 0.22, 960,
          f"{_GCS}mobilenet_v3/weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
          "07fb09a5933dd0c8eaafa16978110389", paper=False),
)

_BY_KEY: dict[str, ModelSpec] = {spec.name.lower(): spec for spec in MODELS}


def get(name: str) -> ModelSpec:
    """The spec named ``name`` (case-insensitive); ConfigError with close matches if none."""
    spec = _BY_KEY.get(str(name).strip().lower())
    if spec is not None:
        return spec
    close = difflib.get_close_matches(str(name).strip().lower(), list(_BY_KEY), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(_BY_KEY[k].name for k in close)}?" if close else ""
    raise ConfigError(
        f"unknown model {name!r}{hint} (`covid-pipeline models` lists the {len(MODELS)} known)"
    )


def all_models() -> tuple[ModelSpec, ...]:
    """Every model in the table, study models first."""
    return MODELS


def paper_models() -> tuple[ModelSpec, ...]:
    """The study's 26 distinct architectures, in Table I order."""
    return tuple(spec for spec in MODELS if spec.paper)


def feature_width(spec: ModelSpec) -> int:
    """Channels of the pooled backbone output (the head's input width)."""
    return spec.features


def gmacs_at(spec: ModelSpec, input_size: int | None = None) -> float:
    """Approximate backbone GMACs at ``input_size`` (scales with the pixel count)."""
    size = input_size or spec.input_size
    return spec.gmacs * (size / spec.input_size) ** 2


def weights_ref(spec: ModelSpec, input_size: int | None = None) -> tuple[str, str, str | None]:
    """``(file, url, hash)`` of the notop ImageNet weights Keras loads at ``input_size``."""
    size = input_size or spec.input_size
    if size == spec.input_size or not spec.size_variants:
        return spec.weights_file, spec.weights_url, spec.weights_hash
    # Keras picks a size-specific file when it has one, else the 224 one.
    tag = f"_{size if size in spec.size_variants else 224}_"
    return (
        spec.weights_file.replace("_224_", tag),
        spec.weights_url.replace("_224_", tag),
        spec.weights_hash,
    )
