"""Benchmark configuration: presets are data (``presets.yaml``), configs are frozen values.

A config comes from a preset (:func:`load_preset`), a YAML file (:func:`load_config`,
optionally ``preset: NAME`` as its base) and command-line overrides
(:func:`with_overrides`). Every problem is a one-line :class:`ManifestError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from covid_pipeline import zoo
from covid_pipeline.errors import ManifestError

PRESETS_FILE = Path(__file__).with_name("presets.yaml")

MODES = ("online", "cached")
BALANCES = ("undersample", "none", "class-weight")
GROUP_BYS = ("patient", "none")
OPTIMIZERS = ("adam", "adamw", "nadam", "rmsprop", "sgd")
IMAGE_SIZES = (64, 2048)  # normalised image side (px), inclusive bounds
MIN_FOLDS = 2
MIN_INPUT_SIZE = 32

# Bump when the meaning of a hashed field changes, so old results are not reused.
_HASH_SCHEMA = 1
# Fields that do not change a trained model's predictions: the model list (each model has
# its own result folder), the execution mode (cached features reproduce online training
# exactly, see DESIGN.md), the feature-extraction batch size and the run's label.
_UNHASHED = frozenset({"models", "mode", "extract_batch_size", "name"})

_INT_FIELDS = ("folds", "epochs", "batch_size", "head_units", "seed", "image_size",
               "extract_batch_size")
_OPTIONAL_INT_FIELDS = ("input_size", "views")
_FLOAT_FIELDS = ("learning_rate", "dropout", "rotation_degrees")
_CHOICE_FIELDS = {"optimizer": OPTIMIZERS, "balance": BALANCES, "group_by": GROUP_BYS,
                  "mode": MODES}


def _paper_model_names() -> tuple[str, ...]:
    return tuple(spec.name for spec in zoo.paper_models())


@dataclass(frozen=True)
class BenchmarkConfig:
    """Everything a benchmark run needs besides the data. Defaults are the study's protocol.

    ``input_size`` None runs each model at its table size; ``views`` None means one
    rotated view per epoch; ``weights`` is "imagenet", None (random) or a weights path.
    ``name`` labels the run (the preset's name or the config file's stem).
    """

    models: tuple[str, ...] = field(default_factory=_paper_model_names)
    folds: int = 5
    epochs: int = 120
    batch_size: int = 64
    optimizer: str = "adam"
    learning_rate: float = 0.002
    dropout: float = 0.5
    head_units: int = 64
    rotation_degrees: float = 45.0
    balance: str = "undersample"
    group_by: str = "patient"
    seed: int = 42
    weights: str | None = "imagenet"
    image_size: int = 512
    input_size: int | None = None
    mode: str = "cached"
    views: int | None = None
    extract_batch_size: int = 32
    name: str = "custom"

    def __post_init__(self) -> None:
        for name, value in _coerce_all(dataclasses.asdict(self)).items():
            object.__setattr__(self, name, value)

    def validate(self) -> BenchmarkConfig:
        """Raise ManifestError (one line) for the first invalid value; return self."""
        _check(bool(self.models), "no models selected; name at least one (`covid-pipeline models`)")
        for name in self.models:
            zoo.get(name)
        for key in ("epochs", "batch_size", "head_units", "extract_batch_size"):
            value = getattr(self, key)
            _check(value >= 1, f"{key} must be a positive integer, got {value}")
        _check(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        _check(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        _check(0 <= self.rotation_degrees <= 180,
               f"rotation_degrees must be in [0, 180], got {self.rotation_degrees}")
        check_data_settings(balance=self.balance, folds=self.folds, group_by=self.group_by,
                            seed=self.seed, image_size=self.image_size)
        _check(self.input_size is None or self.input_size >= MIN_INPUT_SIZE,
               f"input_size must be at least {MIN_INPUT_SIZE} (null: the table's), "
               f"got {self.input_size}")
        _check(self.views is None or self.views >= 1,
               f"views must be at least 1 (null: one per epoch), got {self.views}")
        for key, choices in _CHOICE_FIELDS.items():
            value = getattr(self, key)
            _check(value in choices, f"unknown {key} {value!r}; choose one of {', '.join(choices)}")
        return self

    @property
    def effective_views(self) -> int:
        """Distinct rotated views per image that training uses (at most one per epoch)."""
        return min(self.views or self.epochs, self.epochs)

    def specs(self) -> tuple[zoo.ModelSpec, ...]:
        """The table rows of ``models``, in order."""
        return tuple(zoo.get(name) for name in self.models)

    def input_size_for(self, spec: zoo.ModelSpec) -> int:
        """The input size ``spec`` runs at under this config."""
        return self.input_size or spec.input_size

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BenchmarkConfig:
        """The inverse of :meth:`as_dict` (what tasks receive through Prefect and Dask)."""
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-friendly values (``models`` as a list)."""
        out = dataclasses.asdict(self)
        out["models"] = list(self.models)
        return out

    def config_hash(self) -> str:
        """12 hex digits of sha256 over the fields that change training results."""
        payload = {k: v for k, v in self.as_dict().items() if k not in _UNHASHED}
        payload["views"] = self.effective_views
        payload["_schema"] = _HASH_SCHEMA
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(BenchmarkConfig))


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ManifestError(message)


def check_data_settings(*, balance: str, folds: int, group_by: str, seed: int,
                        image_size: int) -> None:
    """The one set of rules for the data-path settings (``run``, ``ingest``, the flow)."""
    _check(balance in BALANCES, f"unknown balance {balance!r}; choose one of "
                                f"{', '.join(BALANCES)}")
    _check(group_by in GROUP_BYS, f"unknown group_by {group_by!r}; choose one of "
                                  f"{', '.join(GROUP_BYS)}")
    _check(folds >= MIN_FOLDS, f"folds must be at least {MIN_FOLDS}, got {folds}")
    _check(seed >= 0, f"seed must be >= 0, got {seed}")
    low, high = IMAGE_SIZES
    _check(low <= image_size <= high,
           f"image_size must be in {low}..{high} px, got {image_size}")


def _as_int(key: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ManifestError(f"{key} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ManifestError(f"{key} must be an integer, got {value!r}")


def _as_float(key: str, value: Any) -> float:
    if not isinstance(value, bool):
        try:
            number = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            number = math.nan
        if math.isfinite(number):
            return number
    raise ManifestError(f"{key} must be a number, got {value!r}")


def _as_models(value: Any) -> tuple[str, ...]:
    """A list, a comma-separated string, or the keywords ``paper`` / ``all``."""
    if isinstance(value, str):
        keyword = value.strip().lower()
        if keyword == "paper":
            return _paper_model_names()
        if keyword == "all":
            return tuple(spec.name for spec in zoo.all_models())
        value = value.split(",")
    if not isinstance(value, list | tuple):
        raise ManifestError(f"models must be a list of model names, got {value!r}")
    names: list[str] = []
    for item in value:
        name = str(item).strip()
        if not name:
            continue
        with contextlib.suppress(ManifestError):  # validate() reports it with close matches
            name = zoo.get(name).name
        if name not in names:
            names.append(name)
    return tuple(names)


def _as_weights(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    if text.lower() in ("", "none", "null", "random"):
        return None
    return "imagenet" if text.lower() == "imagenet" else text


def _coerce(key: str, value: Any) -> Any:
    """One field's value in its canonical type; ManifestError when it cannot be."""
    if key == "models":
        return _as_models(value)
    if key == "weights":
        return _as_weights(value)
    if key in _INT_FIELDS:
        return _as_int(key, value)
    if key in _OPTIONAL_INT_FIELDS:
        return None if value is None else _as_int(key, value)
    if key in _FLOAT_FIELDS:
        return _as_float(key, value)
    if key in _CHOICE_FIELDS:
        return "none" if value is None else str(value).strip().lower()
    if key == "name":
        return str(value).strip() or "custom"
    return value


def _coerce_all(values: dict[str, Any]) -> dict[str, Any]:
    return {key: _coerce(key, value) for key, value in values.items()}


def _check_keys(keys: Any, origin: str) -> None:
    for key in keys:
        if key not in FIELD_NAMES:
            close = difflib.get_close_matches(str(key), FIELD_NAMES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ManifestError(
                f"{origin}: unknown key {key!r}{hint}; known keys: preset, {', '.join(FIELD_NAMES)}"
            )


@functools.cache
def _preset_table() -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(PRESETS_FILE.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ManifestError(f"{PRESETS_FILE}: expected a mapping of preset name to settings")
    return data


def preset_names() -> tuple[str, ...]:
    """Names of the shipped presets."""
    return tuple(_preset_table())


def _preset_values(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A preset's settings with its ``preset:`` base chain resolved."""
    key = str(name).strip().lower()
    table = _preset_table()
    if key not in table:
        raise ManifestError(f"unknown preset {name!r}; known presets: {', '.join(table)}")
    if key in seen:
        raise ManifestError(f"{PRESETS_FILE}: preset cycle {' -> '.join((*seen, key))}")
    raw = dict(table[key])
    base = raw.pop("preset", None)
    _check_keys(raw, f"{PRESETS_FILE.name}:{key}")
    values = _preset_values(base, (*seen, key)) if base else {}
    values.update(raw)
    return values


def _build(values: dict[str, Any], origin: str) -> BenchmarkConfig:
    try:
        return BenchmarkConfig(**values).validate()
    except ManifestError as exc:
        raise ManifestError(f"{origin}: {exc}") from None


def load_preset(name: str) -> BenchmarkConfig:
    """The validated config of a shipped preset (``paper``, ``paper-image-folds``, ``smoke``)."""
    key = str(name).strip().lower()
    return _build({**_preset_values(key), "name": key}, f"preset {key!r}")


def load_config(path: str | Path, base: str | None = None) -> BenchmarkConfig:
    """A config from a YAML file of BenchmarkConfig keys, optionally ``preset: NAME`` as base.

    Keys not given take the base preset's values (the file's ``preset:``, else ``base``),
    or the study's defaults without either. ``name`` defaults to the file's stem.
    """
    from covid_pipeline import storage

    uri = str(path)
    try:
        text = storage.read_text(uri)
    except FileNotFoundError:
        raise ManifestError(f"config file {uri} not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise ManifestError(f"{uri}: not valid YAML{where}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ManifestError(f"{uri}: expected a mapping of settings, got {type(data).__name__}")
    base = data.pop("preset", None) or base
    _check_keys(data, uri)
    try:
        values = _preset_values(base) if base else {}
    except ManifestError as exc:
        raise ManifestError(f"{uri}: {exc}") from None
    values.update(data)
    if "name" not in data:
        values["name"] = Path(uri.rstrip("/")).stem
    return _build(values, uri)


def with_overrides(cfg: BenchmarkConfig, **overrides: Any) -> BenchmarkConfig:
    """A validated copy of ``cfg`` with the non-None ``overrides`` applied.

    None means "not given" (as from an unset CLI flag); pass ``weights="none"`` for random
    initialisation and ``models="A,B"`` or a list to choose models.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    _check_keys(given, "override")
    return dataclasses.replace(cfg, **given).validate()


def resolve_config(
    preset: str | None = None, config_file: str | Path | None = None, **overrides: Any
) -> BenchmarkConfig:
    """The config a command asks for: a config file (its ``preset:`` key, else ``preset``,
    as the base) or a preset (default ``paper``), then the non-None ``overrides``."""
    cfg = load_config(config_file, base=preset) if config_file else load_preset(preset or "paper")
    return with_overrides(cfg, **overrides)
