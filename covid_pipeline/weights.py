"""ImageNet weights: where they come from, and a preflight before any training starts.

``--weights imagenet`` uses the Keras cache (``$KERAS_HOME/models``), ``--weights none``
random backbones, and ``--weights FOLDER`` a folder of the same files (copied from a
connected machine after ``covid-pipeline weights download``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterable
from pathlib import Path

from covid_pipeline import storage, zoo
from covid_pipeline.config import BenchmarkConfig
from covid_pipeline.errors import ConfigError
from covid_pipeline.zoo import ModelSpec

WEIGHTS_HOST = "storage.googleapis.com"


def uses_random(weights: str | None) -> bool:
    return weights is None or str(weights).strip().lower() in ("", "none", "random", "null")


def folder_of(weights: str) -> str | None:
    return weights if weights.lower() != "imagenet" and os.path.isdir(weights) else None


def backbone_weights(spec: zoo.ModelSpec, cfg: BenchmarkConfig) -> str | None:
    """The ``weights`` argument of :func:`covid_pipeline.backbones.build_backbone`."""
    if uses_random(cfg.weights):
        return None
    folder = folder_of(cfg.weights)
    if folder:
        return str(Path(folder) / zoo.weights_ref(spec, cfg.input_size)[0])
    return cfg.weights


def weights_file(spec: zoo.ModelSpec, cfg: BenchmarkConfig) -> Path | None:
    """The file a backbone's weights are loaded from (None: random initialisation).

    For ``imagenet`` that is the Keras cache's file, fetched first if it is absent.
    """
    weights = backbone_weights(spec, cfg)
    if weights is None:
        return None
    if weights != "imagenet":
        return Path(weights).expanduser()
    if needs_download(spec, cfg):
        return download_weights([spec.name], None, cfg.input_size)[spec.name]
    return keras_models_dir() / zoo.weights_ref(spec, cfg.input_size)[0]


def needs_download(spec: zoo.ModelSpec, cfg: BenchmarkConfig) -> bool:
    """Whether :func:`weights_file` would fetch the file (``imagenet``, not in the Keras
    cache)."""
    return backbone_weights(spec, cfg) == "imagenet" and not (
        keras_models_dir() / zoo.weights_ref(spec, cfg.input_size)[0]).is_file()


RANDOM_WEIGHTS = "random"
_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}


def weights_digest(spec: zoo.ModelSpec, cfg: BenchmarkConfig) -> str:
    """sha256 of the weights file's bytes (``random`` for a seeded random initialisation).

    Computed once per file and remembered by (path, size, mtime, ctime, inode) in this
    process and in ``<cache>/weights-sha256.json``, so replacing a file at the same path
    gives a new digest.
    """
    path = weights_file(spec, cfg)
    if path is None:
        return RANDOM_WEIGHTS
    try:
        stat = path.stat()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the weights file ({exc.strerror}); "
                            "check --weights") from None
    # ctime and inode change whenever the bytes are replaced, even by `cp -p` or rsync -a,
    # which keep the size and mtime
    stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
    key = (str(path.resolve()), *stamp)
    if key in _DIGESTS:
        return _DIGESTS[key]
    index_path = storage.local_cache_dir("weights-sha256.json")
    try:
        with open(index_path, encoding="utf-8") as fh:
            index = json.load(fh)
    except (OSError, ValueError):
        index = {}
    index = index if isinstance(index, dict) else {}
    entry = index.get(key[0])
    if isinstance(entry, dict) and entry.get("stamp") == stamp:
        digest = str(entry["sha256"])
    else:
        digest = storage.file_sha256(path)
        index[key[0]] = {"stamp": stamp, "sha256": digest}
        with contextlib.suppress(storage.StorageError):  # a read-only cache only costs time
            storage.write_json(index_path, index)
    _DIGESTS[key] = digest
    return digest


def network_reachable(host: str = WEIGHTS_HOST, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def missing(cfg: BenchmarkConfig) -> dict[str, str]:
    """Models whose weights file is absent, with the file name Keras expects."""
    if uses_random(cfg.weights):
        return {}
    folder = folder_of(cfg.weights)
    if cfg.weights.lower() != "imagenet" and folder is None and not os.path.isfile(cfg.weights):
        raise ConfigError(f"--weights {cfg.weights!r}: not imagenet, none, or an existing folder")
    if os.path.isfile(cfg.weights):
        return {}
    status = weights_status(cfg.models, folder, cfg.input_size)
    return {m: zoo.weights_ref(zoo.get(m), cfg.input_size)[0] for m, p in status.items()
            if p is None}


def preflight(cfg: BenchmarkConfig, online: bool | None = None) -> None:
    """Stop early, with one message, when weights are missing and cannot be fetched.

    ``online`` says whether the weights host can be reached (probed when None).
    """
    absent = missing(cfg)
    if not absent:
        return
    imagenet = cfg.weights.lower() == "imagenet"
    if imagenet:
        if online is None:
            online = network_reachable()
        if online:
            download_weights(list(absent), None, cfg.input_size)
            return
    where = folder_of(cfg.weights) or str(keras_models_dir())
    raise ConfigError(
        f"ImageNet weights missing from {where}"
        f"{f' and {WEIGHTS_HOST} is unreachable' if imagenet else ''}: "
        f"{', '.join(sorted(set(absent.values())))}; on a connected machine run "
        f"`covid-pipeline weights download --models {','.join(sorted(absent))}` and copy "
        f"its Keras cache folder here (or pass --weights FOLDER, or --weights none)"
    )


def report(names: list[str], folder: str | None = None, input_size: int | None = None
           ) -> list[str]:
    """Print each model's weights status; return the names of the missing ones."""
    status = weights_status(names, folder, input_size)
    for name, path in status.items():
        print(f"{name:<20} {path if path else 'MISSING ' + zoo.weights_ref(zoo.get(name))[0]}")
    return [n for n, p in status.items() if p is None]


def download(names: list[str], folder: str | None = None) -> None:
    for name, path in download_weights(names, folder).items():
        print(f"{name:<20} {path}")


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
    return [zoo.get(n) for n in names]


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
        path = folder / zoo.weights_ref(spec, input_size)[0]
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
    # Keras loads TensorFlow (seconds): only a download needs it.
    from keras.utils import get_file

    folder = Path(cache_dir).expanduser().resolve() if cache_dir else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for spec in _specs(names):
        file, url, file_hash = zoo.weights_ref(spec, input_size)
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
