"""Presets, config files, overrides, validation and the config hash."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from covid_pipeline import config, zoo
from covid_pipeline.config import BenchmarkConfig, load_config, load_preset, with_overrides
from covid_pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_paper_preset_is_the_study_protocol() -> None:
    cfg = load_preset("paper")
    assert cfg.models == tuple(s.name for s in zoo.paper_models())
    assert len(cfg.models) == 26
    assert (cfg.folds, cfg.epochs, cfg.batch_size) == (5, 120, 64)
    assert (cfg.optimizer, cfg.learning_rate, cfg.dropout, cfg.head_units) == (
        "adam", 0.002, 0.5, 64)
    assert (cfg.rotation_degrees, cfg.balance, cfg.group_by, cfg.seed) == (
        45.0, "undersample", "patient", 42)
    assert (cfg.weights, cfg.image_size, cfg.input_size, cfg.mode, cfg.views) == (
        "imagenet", 512, None, "cached", None)
    assert cfg.effective_views == 120
    assert cfg.name == "paper"
    # The dataclass defaults are the study's protocol.
    assert cfg == BenchmarkConfig(name="paper")


def test_paper_image_folds_differs_only_in_grouping() -> None:
    paper, image = load_preset("paper"), load_preset("Paper-Image-Folds")
    assert image.group_by == "none"
    assert image.name == "paper-image-folds"
    assert with_overrides(image, group_by="patient", name="paper") == paper
    assert image.config_hash() != paper.config_hash()


def test_smoke_preset_is_light() -> None:
    cfg = load_preset("smoke")
    assert cfg.models == ("VGG16", "ResNet50")
    assert (cfg.folds, cfg.epochs, cfg.batch_size, cfg.input_size) == (3, 3, 16, 96)
    assert cfg.weights == "imagenet"
    assert [cfg.input_size_for(s) for s in cfg.specs()] == [96, 96]
    assert load_preset("paper").input_size_for(zoo.get("NASNetLarge")) == 331


def test_every_preset_loads() -> None:
    assert set(config.preset_names()) >= {"paper", "paper-image-folds", "smoke"}
    for name in config.preset_names():
        assert load_preset(name).validate()


def test_unknown_preset_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown preset 'papr'.*paper, paper-image-folds"):
        load_preset("papr")


def test_presets_ship_with_the_package() -> None:
    assert config.PRESETS_FILE.parent == ROOT / "covid_pipeline"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "*.yaml" in pyproject["tool"]["setuptools"]["package-data"]["covid_pipeline"]


def test_overrides() -> None:
    base = load_preset("smoke")
    cfg = with_overrides(base, models="resnet50, vgg16,ResNet50", epochs=7, folds=None,
                         weights="none", learning_rate="1e-3")
    assert cfg.models == ("ResNet50", "VGG16")
    assert (cfg.epochs, cfg.folds, cfg.weights, cfg.learning_rate) == (7, 3, None, 0.001)
    assert base.epochs == 3  # frozen original untouched
    assert with_overrides(base) == base
    assert with_overrides(base, models=["MobileNetV3Small"]).models == ("MobileNetV3Small",)
    assert with_overrides(base, models="all").models == tuple(s.name for s in zoo.all_models())
    assert with_overrides(base, weights="/w/mobilenet.h5").weights == "/w/mobilenet.h5"


def test_override_unknown_key() -> None:
    with pytest.raises(ConfigError, match="unknown key 'epoch' \\(did you mean 'epochs'\\?\\)"):
        with_overrides(load_preset("smoke"), epoch=3)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"models": "ResNet50,ResNet5O"}, "unknown model 'ResNet5O'; did you mean ResNet50"),
        ({"models": []}, "no models selected"),
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"epochs": -3}, "epochs must be a positive integer"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"folds": 1}, "folds must be at least 2"),
        ({"learning_rate": 0}, "learning_rate must be > 0"),
        ({"learning_rate": -0.1}, "learning_rate must be > 0"),
        ({"dropout": 1.0}, "dropout must be in \\[0, 1\\)"),
        ({"dropout": -0.1}, "dropout must be in \\[0, 1\\)"),
        ({"rotation_degrees": 181}, "rotation_degrees must be in \\[0, 180\\]"),
        ({"rotation_degrees": -1}, "rotation_degrees must be in \\[0, 180\\]"),
        ({"mode": "streaming"}, "unknown mode 'streaming'; choose one of online, cached"),
        ({"views": 0}, "views must be at least 1"),
        ({"balance": "oversample"}, "unknown balance 'oversample'"),
        ({"group_by": "site"}, "unknown group_by 'site'"),
        ({"optimizer": "lbfgs"}, "unknown optimizer 'lbfgs'"),
        ({"input_size": 16}, "input_size must be at least 32"),
        ({"epochs": "many"}, "epochs must be an integer, got 'many'"),
        ({"epochs": True}, "epochs must be an integer"),
        ({"learning_rate": "fast"}, "learning_rate must be a number"),
    ],
)
def test_validation_errors(change: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        with_overrides(load_preset("smoke"), **change)
    assert "\n" not in str(err.value)


def test_validate_on_a_direct_instance() -> None:
    assert BenchmarkConfig(models=("mobilenet",)).models == ("MobileNet",)
    with pytest.raises(ConfigError, match="folds must be at least 2"):
        BenchmarkConfig(folds=1).validate()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bench.yaml"
    path.write_text(text)
    return path


def test_load_config_with_preset_base(tmp_path) -> None:
    path = _write(tmp_path, "preset: smoke\nepochs: 5\nmodels: [resnet50]\nlearning_rate: 2e-3\n")
    cfg = load_config(path)
    assert cfg.name == "bench"
    assert cfg == with_overrides(load_preset("smoke"), epochs=5, models="ResNet50", name="bench")
    assert cfg.learning_rate == 0.002  # YAML reads 2e-3 as a string; it is coerced


def test_load_config_without_base_uses_study_defaults(tmp_path) -> None:
    cfg = load_config(_write(tmp_path, "folds: 10\nviews: 4\nname: ten-fold\n"))
    assert cfg == BenchmarkConfig(folds=10, views=4, name="ten-fold")
    assert load_config(_write(tmp_path, "")) == BenchmarkConfig(name="bench")


def test_resolve_config(tmp_path) -> None:
    assert config.resolve_config() == load_preset("paper")
    assert config.resolve_config("smoke", epochs=None, folds=4) == with_overrides(
        load_preset("smoke"), folds=4)
    path = _write(tmp_path, "epochs: 2\n")
    # Without a `preset:` key the file builds on the preset given beside it ...
    assert config.resolve_config("smoke", path, seed=1) == with_overrides(
        load_preset("smoke"), epochs=2, seed=1, name="bench")
    # ... and a `preset:` key in the file wins.
    path = _write(tmp_path, "preset: paper\nepochs: 2\n")
    assert config.resolve_config("smoke", path).models == load_preset("paper").models


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("epochs: 3\nlearnig_rate: 0.1\n", "bench.yaml: unknown key 'learnig_rate'"),
        ("preset: nope\n", "bench.yaml: unknown preset 'nope'"),
        ("- epochs\n", "bench.yaml: expected a mapping"),
        ("epochs: [1\n", "bench.yaml: not valid YAML"),
        ("epochs: 0\n", "bench.yaml: epochs must be a positive integer"),
        ("models: [NotANet]\n", "bench.yaml: unknown model 'NotANet'"),
    ],
)
def test_load_config_errors(tmp_path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        load_config(_write(tmp_path, text))
    assert "\n" not in str(err.value)


def test_load_config_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_config_hash_is_stable_and_tracks_training_fields() -> None:
    paper = load_preset("paper")
    assert paper.config_hash() == load_preset("paper").config_hash()
    assert len(paper.config_hash()) == 12
    # Changing the hash invalidates every stored result; change this value deliberately.
    assert paper.config_hash() == "634a88bd811f"
    assert with_overrides(paper, epochs=119).config_hash() != paper.config_hash()
    assert with_overrides(paper, learning_rate=0.001).config_hash() != paper.config_hash()
    assert with_overrides(paper, weights="none").config_hash() != paper.config_hash()
    assert with_overrides(paper, input_size=96).config_hash() != paper.config_hash()
    # Not result-changing: which models run, execution mode, extraction batch size.
    same = with_overrides(paper, models="VGG16", mode="online", extract_batch_size=8,
                          views=120, name="another-label")
    assert same.config_hash() == paper.config_hash()
    assert with_overrides(paper, views=4).config_hash() != paper.config_hash()
    # Equal values spelled differently hash equally.
    assert with_overrides(paper, rotation_degrees="45", learning_rate="2e-3").config_hash() == (
        paper.config_hash()
    )


def test_as_dict_round_trips() -> None:
    cfg = load_preset("smoke")
    data = cfg.as_dict()
    assert data["models"] == ["VGG16", "ResNet50"]
    assert BenchmarkConfig.from_dict(data) == cfg
    assert set(data) == set(config.FIELD_NAMES)
    assert BenchmarkConfig(**data) == cfg


def test_a_new_setting_declared_unless_default_keeps_existing_hashes() -> None:
    """Adding a field (here to a subclass) that enters the hash only when set keeps every
    stored result's hash; setting it changes the hash."""
    import pydantic

    from covid_pipeline.config import setting

    extended = pydantic.create_model(
        "Extended", __base__=BenchmarkConfig,
        label_smoothing=(float, setting(0.0, hashed="unless-default", help="smoothing")))
    paper = load_preset("paper")
    same = extended(**paper.flat_dict())
    assert same.config_hash() == paper.config_hash() == "634a88bd811f"
    assert extended(**paper.flat_dict(), label_smoothing=0.1).config_hash() != "634a88bd811f"
    hashed_always = pydantic.create_model(
        "Always", __base__=BenchmarkConfig,
        label_smoothing=(float, setting(0.0, help="smoothing")))
    assert hashed_always(**paper.flat_dict()).config_hash() != "634a88bd811f"
