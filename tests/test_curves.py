"""Training curves: which records are drawn, and a PNG per model."""

from __future__ import annotations

from covid_pipeline import curves


def record(model: str, fold: int, repeat: int = 0, control: bool = False) -> dict:
    loss = [1.0 / (e + 1 + fold) for e in range(4)]
    return {"model": model, "fold": fold, "repeat": repeat, "control": control,
            "curves": {"loss": loss, "accuracy": [0.5, 0.6, 0.7, 0.8],
                       "val_loss": loss[::-1], "val_accuracy": [0.5] * 4}}


def test_curves_of_repeat_zero_folds_per_model_without_the_control(tmp_path):
    records = [record("VGG16", k) for k in (2, 0, 1)] + [
        record("VGG16", 0, repeat=1), record("VGG16", 1, control=True),
        record("ResNet50", 0), {"model": "old", "fold": 0}]  # an old record: no curves
    by_fold = curves.fold_curves(records, "VGG16")
    assert list(by_fold) == [0, 1, 2]
    assert by_fold[2]["loss"] == record("VGG16", 2)["curves"]["loss"]
    uris = curves.write_curves(records, str(tmp_path))
    assert sorted(uris) == ["ResNet50", "VGG16"]
    for model in uris:
        png = (tmp_path / model / "curves.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_a_models_curves_are_drawn_once_and_again_only_when_they_change(tmp_path,
                                                                        monkeypatch):
    """The PNG carries the digest of its curves: a worker's drawing is not repeated by the
    aggregation; changed curves, a PNG drawn before digests, or a damaged file are redrawn."""
    records = [record("VGG16", k) for k in range(3)]
    drawn = []
    draw = curves.curves_png
    monkeypatch.setattr(curves, "curves_png", lambda m, b: drawn.append(m) or draw(m, b))
    uri = curves.write_model_curves(records, str(tmp_path), "VGG16")
    png = tmp_path / "VGG16" / "curves.png"
    assert uri == str(png) and drawn == ["VGG16"]
    assert curves.drawn_key(uri) == curves.curves_key("VGG16", curves.fold_curves(records,
                                                                                 "VGG16"))
    assert curves.write_curves(records, str(tmp_path)) == {"VGG16": uri}
    assert drawn == ["VGG16"]  # current: not drawn again
    records[1]["curves"]["val_loss"][-1] += 0.01  # a retrained fold
    curves.write_curves(records, str(tmp_path))
    assert drawn == ["VGG16"] * 2
    assert curves.write_model_curves(records, str(tmp_path), "ResNet50") is None  # no folds
    png.write_bytes(png.read_bytes()[:100])  # damaged
    curves.write_curves(records, str(tmp_path))
    png.write_bytes(b"not a png")
    curves.write_curves(records, str(tmp_path))
    assert drawn == ["VGG16"] * 4 and curves.drawn_key(uri) is not None
