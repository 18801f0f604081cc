"""Benchmark configuration: one validated, frozen pydantic model for every entry point.

A config comes from a preset (:func:`load_preset`, presets are data in ``presets.yaml``), a
YAML file (:func:`load_config`, optionally ``preset: NAME`` as its base) and overrides
(:func:`with_overrides`, what the command line gives). The CLI builds its options from the
fields (:func:`cli_fields`), the flow takes the model itself (the Prefect UI's run form
shows its fields), and deployments pass its dump. Every problem is one line
(:class:`~covid_pipeline.errors.ConfigError`).

Each field declares whether it enters the config hash (``setting(..., hashed=False)``) and
its command-line flag, if it has one. Presets and config files keep their flat keys; the
data-path settings are stored as the nested :class:`DataSettings`.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import json
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from covid_pipeline import storage, zoo
from covid_pipeline.errors import ConfigError

PRESETS_FILE = Path(__file__).with_name("presets.yaml")

Mode = Literal["online", "cached"]
Balance = Literal["undersample", "none", "class-weight"]
GroupBy = Literal["patient", "none"]
Optimizer = Literal["adam", "adamw", "nadam", "rmsprop", "sgd"]
MODES: tuple[str, ...] = typing.get_args(Mode)
BALANCES: tuple[str, ...] = typing.get_args(Balance)
GROUP_BYS: tuple[str, ...] = typing.get_args(GroupBy)
OPTIMIZERS: tuple[str, ...] = typing.get_args(Optimizer)
IMAGE_SIZES = (64, 2048)  # normalised image side (px), inclusive bounds
MIN_FOLDS = 2
MIN_INPUT_SIZE = 32

# Bump when the meaning of a hashed field changes, so old results are not reused.
_HASH_SCHEMA = 1


def _integer(value: Any) -> Any:
    """Ints, integral floats and numeric strings; never a bool (YAML's ``yes``)."""
    if isinstance(value, bool):
        raise ValueError("bool")
    if isinstance(value, str):
        return value.strip()
    return value


def _choice(value: Any) -> Any:
    """Choices are case-insensitive; YAML's null spells the choice ``none``."""
    return "none" if value is None else str(value).strip().lower()


Int = Annotated[int, BeforeValidator(_integer)]
Choice = BeforeValidator(_choice)


def setting(default: Any = ..., *, help: str, flag: str | None = None,
            hashed: bool | Literal["unless-default"] = True, **kwargs: Any) -> Any:
    """A config field: ``hashed`` says whether it enters the config hash (True, False, or
    ``"unless-default"``: only when set to another value than its default, so that adding
    a setting keeps every existing hash and stored result); ``flag`` is its command-line
    option (none: config files and presets only)."""
    return Field(default, description=help, json_schema_extra={"hashed": hashed, "flag": flag},
                 **kwargs)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(describe(exc)) from None


class DataSettings(_Frozen):
    """Everything that decides a dataset version besides the source files themselves."""

    balance: Annotated[Balance, Choice] = setting(
        "undersample", flag="--balance",
        help="class balancing: the study's seeded undersampling, none, or class weights")
    folds: Int = setting(5, ge=MIN_FOLDS, flag="--folds", help="cross-validation folds")
    group_by: Annotated[GroupBy, Choice] = setting(
        "patient", flag="--group-by",
        help="keep each patient's images in one fold (patient) or not (none: image-level)")
    seed: Int = setting(42, ge=0, flag="--seed",
                        help="seed of balancing, folds, head initialisation and rotations")
    image_size: Int = setting(512, ge=IMAGE_SIZES[0], le=IMAGE_SIZES[1], flag="--image-size",
                              help="side of the normalised images (px)")
    source_options: dict[str, dict[str, Any]] = setting(
        {}, hashed=False,
        help="per source kind, e.g. {ieee8023: {views: [PA, AP], no_finding_as_normal: true}}")

    def validate(self) -> DataSettings:  # type: ignore[override]
        """Already valid on construction; kept so callers can say so explicitly."""
        return self

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


DATA_FIELDS: tuple[str, ...] = tuple(DataSettings.model_fields)


def _paper_model_names() -> tuple[str, ...]:
    return tuple(spec.name for spec in zoo.paper_models())


class BenchmarkConfig(_Frozen):
    """Everything a benchmark run needs besides the data sources. Defaults are the study's.

    ``input_size`` None runs each model at its table size; ``views`` None means one
    rotated view per epoch; ``weights`` is "imagenet", None (random) or a weights path.
    ``name`` labels the run (the preset's name or the config file's stem). The data-path
    settings (``folds``, ``seed``, ...) live in ``data`` and read as attributes here too.
    """

    models: tuple[str, ...] = setting(
        default_factory=_paper_model_names, hashed=False, flag="--models",
        help="comma-separated model names, or paper / all (`covid-pipeline models`)")
    epochs: Int = setting(120, ge=1, flag="--epochs", help="training epochs of the head")
    batch_size: Int = setting(64, ge=1, help="head training batch size")
    optimizer: Annotated[Optimizer, Choice] = setting("adam", help="head optimizer")
    learning_rate: float = setting(0.002, gt=0, allow_inf_nan=False,
                                   help="head learning rate")
    dropout: float = setting(0.5, ge=0, lt=1, allow_inf_nan=False,
                             help="dropout rate between the head's dense layers")
    head_units: Int = setting(64, ge=1, help="units of the head's hidden dense layer")
    rotation_degrees: float = setting(45.0, ge=0, le=180, allow_inf_nan=False,
                                      help="random rotation augmentation, up to ± degrees")
    weights: str | None = setting("imagenet", flag="--weights",
                                  help="imagenet, none (random backbones), or a folder/file")
    input_size: Int | None = setting(None, ge=MIN_INPUT_SIZE, flag="--input-size",
                                     help="run every model at this input size "
                                          "(default: the table's)")
    mode: Annotated[Mode, Choice] = setting(
        "cached", hashed=False, flag="--mode",
        help="online: the study's procedure; cached: backbone features per image and view")
    views: Int | None = setting(None, ge=1, flag="--views",
                                help="cached mode: rotated views per image (default: = epochs)")
    repeats: Int = setting(1, ge=1, hashed=False, flag="--repeats",
                           help="repeats of k-fold cross-validation, each a new seeded "
                                "patient-grouped split (cached mode: no extra backbone pass)")
    extract_batch_size: Int = setting(32, ge=1, hashed=False,
                                      help="backbone batch size of feature extraction")
    cluster_ingest_files: Int = setting(
        2000, ge=1, hashed=False,
        help="files to read (those the ingest index does not know) from which the flow "
             "reads them in chunks on the Dask cluster instead of in its own process")
    bootstrap_resamples: Int = setting(2000, ge=0, hashed=False,
                                       help="patient-level bootstrap resamples of the 95 % "
                                            "intervals (0: no intervals)")
    alpha: float = setting(0.05, gt=0, lt=1, hashed=False,
                           help="significance level of the comparisons with the best model")
    control_models: str = setting(
        "all", hashed=False, flag="--control-models",
        help="border-only control (centre blacked out) for all models, none, or A,B")
    control_box: float = setting(0.6, gt=0, lt=1, allow_inf_nan=False, hashed=False,
                                 flag="--control-box",
                                 help="border-only control: side of the blacked-out central "
                                      "box, as a fraction of each image side")
    control_views: Int = setting(4, ge=1, hashed=False,
                                 help="border-only control: rotated views per image (its "
                                      "backbone cost is images x (views + 1) passes)")
    gradcam_images: Int = setting(
        8, ge=0, le=64, hashed=False,
        help="out-of-fold test images per model in its Grad-CAM panel, both classes, right "
             "and wrong predictions (0: no panel)")
    mlflow: str | None = setting(
        None, hashed=False, flag="--mlflow",
        help="an MLflow tracking URI (default: MLFLOW_TRACKING_URI; none: no tracking): a "
             "run per model, a nested run per fold")
    tensorboard: str | None = setting(
        None, hashed=False, flag="--tensorboard",
        help="a folder for Keras TensorBoard logs of every head's training, one run folder "
             "per (model, repeat, fold)")
    name: str = setting("custom", hashed=False, help="label of the run")
    data: DataSettings = setting(default_factory=DataSettings,
                                 help="data-path settings (the dataset version's)")

    @model_validator(mode="before")
    @classmethod
    def _nest_data_settings(cls, values: Any) -> Any:
        """Flat keys (presets, config files, overrides) go into ``data``."""
        if not isinstance(values, dict):
            return values
        values = dict(values)
        data = values.pop("data", None) or {}
        if isinstance(data, DataSettings):
            data = data.as_dict()
        elif not isinstance(data, Mapping):
            raise ValueError(f"data must be a mapping of data-path settings, got {data!r}")
        data = dict(data)
        for key in DATA_FIELDS:
            if key in values:
                data[key] = values.pop(key)
        values["data"] = data
        return values

    @model_validator(mode="after")
    def _online_runs_one_repeat(self) -> BenchmarkConfig:
        if self.mode == "online" and self.repeats > 1:
            raise ValueError(f"repeats {self.repeats} needs --mode cached: online mode runs "
                             "the backbone every epoch and supports one repeat")
        return self

    @model_validator(mode="after")
    def _control_among_models(self) -> BenchmarkConfig:
        if self.control_models in ("all", "none"):
            return self
        missing = [m for m in self.control_models.split(",") if m not in self.models]
        if missing:
            raise ValueError(f"control_models names {', '.join(missing)}, not among the run's "
                             f"models ({', '.join(self.models)}); name a subset, all or none")
        return self

    @field_validator("models", mode="before")
    @classmethod
    def _models(cls, value: Any) -> tuple[str, ...]:
        return _as_models(value)

    @field_validator("control_models", mode="before")
    @classmethod
    def _control_models(cls, value: Any) -> str:
        if value is None or (isinstance(value, str) and value.strip().lower() in
                             ("", "none", "null")):
            return "none"
        if isinstance(value, str) and value.strip().lower() == "all":
            return "all"
        names = _as_models(value)
        for name in names:
            zoo.get(name)
        return ",".join(names) if names else "none"

    @field_validator("models")
    @classmethod
    def _known_models(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("no models selected; name at least one (`covid-pipeline models`)")
        for name in value:
            zoo.get(name)
        return value

    @field_validator("weights", mode="before")
    @classmethod
    def _weights(cls, value: Any) -> str | None:
        if value is None:
            return None
        text = str(value).strip()
        if text.lower() in ("", "none", "null", "random"):
            return None
        return "imagenet" if text.lower() == "imagenet" else text

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> str:
        return str(value).strip() or "custom"

    # The data-path settings read as before: cfg.folds, cfg.seed, ...
    @property
    def folds(self) -> int:
        return self.data.folds

    @property
    def seed(self) -> int:
        return self.data.seed

    @property
    def balance(self) -> str:
        return self.data.balance

    @property
    def group_by(self) -> str:
        return self.data.group_by

    @property
    def image_size(self) -> int:
        return self.data.image_size

    def validate(self) -> BenchmarkConfig:  # type: ignore[override]
        """Already valid on construction; kept so callers can say so explicitly."""
        return self

    @property
    def effective_views(self) -> int:
        """Distinct rotated views per image that training uses (at most one per epoch)."""
        return min(self.views or self.epochs, self.epochs)

    @property
    def controlled_models(self) -> tuple[str, ...]:
        """The models that get the border-only control, in ``models`` order."""
        if self.control_models == "all":
            return self.models
        chosen = set(self.control_models.split(",")) if self.control_models != "none" else set()
        return tuple(m for m in self.models if m in chosen)

    @property
    def effective_control_views(self) -> int:
        """Rotated views per image of the border-only control (at most one per epoch)."""
        return min(self.control_views, self.epochs)

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
        """Plain JSON/YAML-friendly values (``models`` as a list, ``data`` nested)."""
        return self.model_dump(mode="json")

    def flat_dict(self) -> dict[str, Any]:
        """:meth:`as_dict` with the data-path settings at the top, as presets spell them."""
        out = self.as_dict()
        out.update(out.pop("data"))
        return out

    def config_hash(self) -> str:
        """12 hex digits of sha256 over the fields that change training results."""
        fields = {**type(self).model_fields, **DataSettings.model_fields}
        defaults = _defaults(type(self))
        payload = {}
        for key, value in self.flat_dict().items():
            hashed = (fields[key].json_schema_extra or {}).get("hashed", True)
            if hashed is True or (hashed == "unless-default" and value != defaults[key]):
                payload[key] = value
        payload["views"] = self.effective_views
        # A weights file enters by its content (each fold result's weights_sha256), not by
        # its path: moving a weights folder keeps the config and its results.
        if self.weights not in (None, "imagenet"):
            payload["weights"] = "file"
        payload["_schema"] = _HASH_SCHEMA
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def to_yaml(self) -> str:
        """The resolved config as YAML (flat keys: a valid ``--config`` file)."""
        return yaml.safe_dump(self.flat_dict(), sort_keys=False)


@functools.cache
def _defaults(cls: type[BenchmarkConfig]) -> dict[str, Any]:
    return cls().flat_dict()


def field_info(name: str) -> FieldInfo:
    """The field ``name`` of either model (flat key)."""
    model = DataSettings if name in DATA_FIELDS else BenchmarkConfig
    return model.model_fields[name]


def _extra(name: str) -> dict[str, Any]:
    extra = field_info(name).json_schema_extra
    return extra if isinstance(extra, dict) else {}


FIELD_NAMES: tuple[str, ...] = tuple(BenchmarkConfig.model_fields)
KEYS: tuple[str, ...] = tuple(k for k in FIELD_NAMES if k != "data") + DATA_FIELDS


def cli_fields() -> dict[str, FieldInfo]:
    """Flat key → field of every setting with a command-line flag."""
    return {k: field_info(k) for k in KEYS if _extra(k).get("flag")}


def flag_of(name: str) -> str | None:
    return _extra(name).get("flag")


def choices_of(name: str) -> tuple[str, ...]:
    """The Literal choices of a field, () when it is not a choice."""
    annotation = field_info(name).annotation
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return typing.get_args(annotation) if typing.get_origin(annotation) is Literal else ()


def describe(exc: ValidationError) -> str:
    """The first error of a ValidationError as one line that names the setting."""
    err = exc.errors(include_url=False)[0]
    loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
    key = loc[-1] if loc else "config"
    value, kind, ctx = err.get("input"), err["type"], err.get("ctx") or {}
    if kind == "value_error" and isinstance(ctx.get("error"), Exception):
        if str(ctx["error"]) == "bool":
            return f"{key} must be an integer, got {value!r}"
        return str(ctx["error"])
    if kind == "extra_forbidden":
        return _unknown_key(key, "config")
    if kind == "literal_error":
        return f"unknown {key} {value!r}; choose one of {', '.join(choices_of(key))}"
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return f"{key} must be an integer, got {value!r}"
    if kind in ("float_parsing", "float_type", "finite_number"):
        return f"{key} must be a number, got {value!r}"
    if key in KEYS and kind in ("greater_than_equal", "greater_than", "less_than_equal",
                                "less_than"):
        return f"{key} must be {_bounds(key)}, got {value}"
    return f"{key}: {err['msg']}, got {value!r}"


def _bounds(key: str) -> str:
    """A field's bounds in words: 'at least 2', 'in [0, 1)', 'a positive integer', '> 0'."""
    info = field_info(key)
    found = {attr: getattr(meta, attr) for meta in info.metadata
             for attr in ("ge", "gt", "le", "lt") if getattr(meta, attr, None) is not None}
    low, high = found.get("ge", found.get("gt")), found.get("le", found.get("lt"))
    if low is not None and high is not None:
        return (f"in {'(' if 'gt' in found else '['}{low}, {high}"
                f"{')' if 'lt' in found else ']'}")
    if "gt" in found:
        return f"> {low}"
    if low == 1 and info.default is not None:  # counts; optional ones say "at least 1"
        return "a positive integer"
    return f"at least {low}" if low is not None else f"at most {high}"


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
        raise ValueError(f"models must be a list of model names, got {value!r}")
    names: list[str] = []
    for item in value:
        name = str(item).strip()
        if not name:
            continue
        with contextlib.suppress(ConfigError):  # the after-validator reports it, with hints
            name = zoo.get(name).name
        if name not in names:
            names.append(name)
    return tuple(names)


def _unknown_key(key: Any, origin: str) -> str:
    close = difflib.get_close_matches(str(key), KEYS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{origin}: unknown key {key!r}{hint}; known keys: preset, {', '.join(KEYS)}"


def _check_keys(keys: Any, origin: str) -> None:
    for key in keys:
        if key not in KEYS and key != "data":
            raise ConfigError(_unknown_key(key, origin))


@functools.cache
def _preset_table() -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(PRESETS_FILE.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"{PRESETS_FILE}: expected a mapping of preset name to settings")
    return data


def preset_names() -> tuple[str, ...]:
    """Names of the shipped presets."""
    return tuple(_preset_table())


def _preset_values(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A preset's settings with its ``preset:`` base chain resolved."""
    key = str(name).strip().lower()
    table = _preset_table()
    if key not in table:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(table)}")
    if key in seen:
        raise ConfigError(f"{PRESETS_FILE}: preset cycle {' -> '.join((*seen, key))}")
    raw = dict(table[key])
    base = raw.pop("preset", None)
    _check_keys(raw, f"{PRESETS_FILE.name}:{key}")
    values = _preset_values(base, (*seen, key)) if base else {}
    values.update(raw)
    return values


def _build(values: dict[str, Any], origin: str) -> BenchmarkConfig:
    try:
        return BenchmarkConfig(**values)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None


def load_preset(name: str) -> BenchmarkConfig:
    """The validated config of a shipped preset (``paper``, ``paper-image-folds``, ``smoke``)."""
    key = str(name).strip().lower()
    return _build({**_preset_values(key), "name": key}, f"preset {key!r}")


def load_config(path: str | Path, base: str | None = None) -> BenchmarkConfig:
    """A config from a YAML file of config keys, optionally ``preset: NAME`` as base.

    Keys not given take the base preset's values (the file's ``preset:``, else ``base``),
    or the study's defaults without either. ``name`` defaults to the file's stem.
    """
    uri = str(path)
    try:
        text = storage.read_text(uri)
    except FileNotFoundError:
        raise ConfigError(f"config file {uri} not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{uri}: not a text file; give a YAML config file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise ConfigError(f"{uri}: not valid YAML{where}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{uri}: expected a mapping of settings, got {type(data).__name__}")
    base = data.pop("preset", None) or base
    _check_keys(data, uri)
    try:
        values = _preset_values(base) if base else {}
    except ConfigError as exc:
        raise ConfigError(f"{uri}: {exc}") from None
    values.update(data)
    if "name" not in data:
        values["name"] = Path(uri.rstrip("/")).stem
    return _build(values, uri)


def with_overrides(cfg: BenchmarkConfig, **overrides: Any) -> BenchmarkConfig:
    """A validated copy of ``cfg`` with the non-None ``overrides`` (flat keys) applied.

    None means "not given" (as from an unset CLI flag); pass ``weights="none"`` for random
    initialisation and ``models="A,B"`` or a list to choose models.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    _check_keys(given, "override")
    values = cfg.flat_dict()
    if "data" in given:
        values.update(dict(given.pop("data")))
    values.update(given)
    return BenchmarkConfig(**values)


def resolve_config(
    preset: str | None = None, config_file: str | Path | None = None, **overrides: Any
) -> BenchmarkConfig:
    """The config a command asks for: a config file (its ``preset:`` key, else ``preset``,
    as the base) or a preset (default ``paper``), then the non-None ``overrides``."""
    cfg = load_config(config_file, base=preset) if config_file else load_preset(preset or "paper")
    return with_overrides(cfg, **overrides)
