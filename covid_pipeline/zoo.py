"""The model table: every backbone the benchmark knows, in one place.

Importing this module is cheap (no TensorFlow, no Keras): the CLI lists models from it.
Keras is imported inside the functions that build or preprocess.

Weight-file names, URLs and hashes are the ones Keras 3 itself requests for
``include_top=False, weights="imagenet"`` (checked by ``tests/test_zoo.py``), so a
cache filled by :func:`download_weights` is found by Keras without a network.
"""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from covid_pipeline.errors import ManifestError

if TYPE_CHECKING:
    import keras

_GCS = "https://storage.googleapis.com/tensorflow/keras-applications/"
_GCS_EFFNET = "https://storage.googleapis.com/keras-applications/"
_APPS = "keras.applications."


@dataclass(frozen=True)
class ModelSpec:
    """One backbone: how to build it, feed it and fetch its ImageNet weights.

    ``preprocess`` is the dotted path of the ``preprocess_input`` to apply to 0..255 RGB
    input, or None where the model rescales inside itself. ``gmacs`` is the approximate
    backbone cost in GMACs at ``input_size``. ``weights_file``/``weights_url``/
    ``weights_hash`` describe the notop ImageNet weights at ``input_size``;
    ``size_variants`` lists input sizes for which Keras loads a size-specific file
    (the ``_224_`` in the name replaced by the size). ``features`` is the width of the
    globally average-pooled output.
    """

    name: str
    family: str
    constructor: str
    input_size: int
    preprocess: str | None
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
    preprocess: str | None,
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
        preprocess=_APPS + preprocess + ".preprocess_input" if preprocess else None,
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
        "resnet_v2" if v2 else "resnet",
        gmacs,
        2048,
        f"{_GCS}resnet/{name.lower()}{_TF}",
        weights_hash,
    )


def _densenet(depth: int, gmacs: float, features: int, weights_hash: str) -> ModelSpec:
    url = f"{_GCS}densenet/densenet{depth}{_TF}"
    return _spec(f"DenseNet{depth}", "densenet", 224, "densenet", gmacs, features, url,
                 weights_hash)


def _efficientnet(b: int, gmacs: float, features: int, weights_hash: str) -> ModelSpec:
    # The study ran every EfficientNet at 224, not at its native resolution.
    url = f"{_GCS_EFFNET}efficientnetb{b}_notop.h5"
    return _spec(f"EfficientNetB{b}", "efficientnet", 224, None, gmacs, features, url,
                 weights_hash)


# Order follows Table I of the study; newer keras.applications models come last.
MODELS: tuple[ModelSpec, ...] = (
    _spec("InceptionV3", "inception_v3", 299, "inception_v3", 5.7, 2048,
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
    _spec("MobileNet", "mobilenet", 224, "mobilenet", 0.57, 1024,
          f"{_GCS}mobilenet/mobilenet_1_0_224_tf_no_top.h5", None,
          size_variants=(128, 160, 192, 224)),
    _resnet("ResNet50", 224, 4.1, "4d473c1dd8becc155b73f8504c6f6626"),
    _resnet("ResNet101V2", 299, 13.9, "c0ed64b8031c3730f411d2eb4eea35b5"),
    _spec("VGG19", "vgg", 224, "vgg19", 19.6, 512,
          f"{_GCS}vgg19/vgg19{_TF}", "253f8cb515780f3b799900260a226db6"),
    _spec("Xception", "xception", 299, "xception", 8.4, 2048,
          f"{_GCS}xception/xception{_TF}", "b0042744bf5b25fce3cb969f33bebb97"),
    _spec("MobileNetV2", "mobilenet_v2", 224, "mobilenet_v2", 0.30, 1280,
          f"{_GCS}mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
          None, size_variants=(96, 128, 160, 192, 224)),
    _resnet("ResNet101", 224, 7.8, "88cf7a10940856eca736dc7b7e228a21"),
    _resnet("ResNet152", 224, 11.5, "ee4c566cf9a93f14d82f913c2dc6dd0c"),
    _spec("InceptionResNetV2", "inception_resnet_v2", 299, "inception_resnet_v2", 13.2, 1536,
          f"{_GCS}inception_resnet_v2/inception_resnet_v2{_TF}",
          "d19885ff4a710c122648d3b5c3b684e4"),
    _spec("NASNetLarge", "nasnet", 331, "nasnet", 23.8, 4032,
          f"{_GCS}nasnet/NASNet-large-no-top.h5", "d81d89dc07e6e56530c4e77faddd61b5",
          file="nasnet_large_no_top.h5"),
    _spec("NASNetMobile", "nasnet", 224, "nasnet", 0.56, 1056,
          f"{_GCS}nasnet/NASNet-mobile-no-top.h5", "1ed92395b5b598bdda52abe5c0dbfd63",
          file="nasnet_mobile_no_top.h5"),
    _resnet("ResNet50V2", 224, 4.1, "fac2f116257151a9d068a22e544a4917"),
    _spec("VGG16", "vgg", 224, "vgg16", 15.5, 512,
          f"{_GCS}vgg16/vgg16{_TF}", "6d6bbae143d832006294945121d1f1fc"),
    # Newer architectures, not in the study. All three rescale inside the model.
    _spec("ConvNeXtTiny", "convnext", 224, None, 4.5, 768,
          f"{_GCS}convnext/convnext_tiny_notop.h5",
          "d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1", paper=False),
    _spec("EfficientNetV2B0", "efficientnet_v2", 224, None, 0.72, 1280,
          f"{_GCS}efficientnet_v2/efficientnetv2-b0_notop.h5",
          "893217f2bb855e2983157299931e43ff", paper=False),
    _spec("MobileNetV3Small", "mobilenet_v3", 224, None, 0.06, 576,
          f"{_GCS}mobilenet_v3/weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
          "d3e8ec802a04aa4fc771ee12a9a9b836", paper=False),
    _spec("MobileNetV3Large", "mobilenet_v3", 224, None, 0.22, 960,
          f"{_GCS}mobilenet_v3/weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
          "07fb09a5933dd0c8eaafa16978110389", paper=False),
)

_BY_KEY: dict[str, ModelSpec] = {spec.name.lower(): spec for spec in MODELS}


def get(name: str) -> ModelSpec:
    """The spec named ``name`` (case-insensitive); ManifestError with close matches if none."""
    spec = _BY_KEY.get(str(name).strip().lower())
    if spec is not None:
        return spec
    close = difflib.get_close_matches(str(name).strip().lower(), list(_BY_KEY), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(_BY_KEY[k].name for k in close)}?" if close else ""
    raise ManifestError(
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


def _resolve(dotted: str) -> Any:
    module, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _identity(x: Any) -> Any:
    return x


def preprocess_fn(spec: ModelSpec) -> Callable[[Any], Any]:
    """The input normalisation for ``spec``: identity where the model rescales inside.

    Keras' ``preprocess_input`` divides NumPy float arrays in place; the returned function
    works on a float32 copy instead, so callers' arrays are never changed.
    """
    if not spec.preprocess:
        return _identity
    fn = _resolve(spec.preprocess)

    def preprocess(x: Any) -> Any:
        import numpy as np

        if isinstance(x, np.ndarray):
            x = x.astype("float32", copy=True)
        return fn(x)

    preprocess.__name__ = f"preprocess_{spec.name}"
    return preprocess


def _weights_arg(weights: str | os.PathLike[str] | None) -> str | None:
    """Normalise ``weights`` to "imagenet", None or an existing file path."""
    if weights is None:
        return None
    text = os.fspath(weights).strip()
    if text.lower() in ("", "none", "null", "random"):
        return None
    if text.lower() == "imagenet":
        return "imagenet"
    if not Path(text).expanduser().is_file():
        raise ManifestError(
            f"weights file {text!r} not found; use 'imagenet', 'none' or a path to an .h5 file"
        )
    return str(Path(text).expanduser())


def build_backbone(
    spec: ModelSpec,
    weights: str | os.PathLike[str] | None = "imagenet",
    input_size: int | None = None,
    seed: int | None = None,
) -> keras.Model:
    """The frozen-able feature extractor: ``include_top=False``, global average pooling.

    ``weights`` is "imagenet" (Keras cache, downloaded if absent), None (random init) or
    a path to an .h5/.weights.h5 file for this backbone. ``input_size`` overrides the
    table's size (e.g. the light presets run at 96). With random weights, ``seed`` makes
    them a pure function of the seed (see :func:`reinitialise`).
    """
    weights = _weights_arg(weights)
    size = int(input_size or spec.input_size)
    constructor = _resolve(spec.constructor)
    model = constructor(
        include_top=False,
        weights="imagenet" if weights == "imagenet" else None,
        input_shape=(size, size, 3),
        pooling="avg",
    )
    if weights not in (None, "imagenet"):
        model.load_weights(weights)
    if weights is None and seed is not None:
        reinitialise(model, seed)
    return model


def reinitialise(model: keras.Model, seed: int) -> None:
    """Redraw a random backbone's random variables from ``numpy`` seeded by ``seed``.

    Keras draws initial weights from Python's global ``random``, which other threads of a
    Dask worker (Prefect, distributed) also consume: the same seed could give different
    backbones. Kernels get Glorot-uniform values from a private generator instead; constant
    variables (biases, BatchNorm statistics) are left as built.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    for var in model.weights:
        if len(var.shape) < 2:
            continue
        shape = tuple(int(d) for d in var.shape)
        receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
        fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
        limit = float(np.sqrt(6.0 / (fan_in + fan_out)))
        var.assign(rng.uniform(-limit, limit, shape).astype(var.dtype))


def keras_models_dir() -> Path:
    """Where Keras caches application weights: ``$KERAS_HOME/models`` or ``~/.keras/models``.

    Mirrors Keras' own fallback to ``/tmp/.keras`` when the home folder is not writable.
    """
    home = os.environ.get("KERAS_HOME")
    if not home:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    home = os.path.expanduser(home)
    if os.path.exists(home) and not os.access(home, os.W_OK):
        home = "/tmp/.keras"
    return Path(home) / "models"


def _specs(names: Iterable[str] | str) -> list[ModelSpec]:
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    return [get(n) for n in names]


def weights_status(
    names: Iterable[str] | str,
    cache_dir: str | os.PathLike[str] | None = None,
    input_size: int | None = None,
) -> dict[str, Path | None]:
    """For each model, the path of its cached notop weights file, or None if absent.

    ``cache_dir`` is the folder holding the files (default: :func:`keras_models_dir`).
    """
    folder = Path(cache_dir).expanduser() if cache_dir else keras_models_dir()
    status: dict[str, Path | None] = {}
    for spec in _specs(names):
        path = folder / weights_ref(spec, input_size)[0]
        status[spec.name] = path if path.is_file() and path.stat().st_size > 0 else None
    return status


def download_weights(
    names: Iterable[str] | str,
    cache_dir: str | os.PathLike[str] | None = None,
    input_size: int | None = None,
) -> dict[str, Path]:
    """Fetch each model's notop ImageNet weights into the cache (hash-checked where known).

    Files already present (and matching their hash) are not downloaded again.
    """
    from keras.utils import get_file

    folder = Path(cache_dir).expanduser().resolve() if cache_dir else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for spec in _specs(names):
        file, url, file_hash = weights_ref(spec, input_size)
        try:
            path = get_file(
                file,
                url,
                cache_subdir=str(folder) if folder is not None else "models",
                file_hash=file_hash,
            )
        except Exception as exc:  # Keras raises a bare Exception for network errors
            raise RuntimeError(f"could not fetch {spec.name} weights from {url}: {exc}") from exc
        paths[spec.name] = Path(path)
    return paths
