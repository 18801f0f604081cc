"""The confound report: counts per class and fact, and warnings when a fact alone separates
the classes (the study's data: every COVID-19 image from ieee8023, every normal from RSNA)."""

from __future__ import annotations

import pandas as pd
import pytest

from covid_pipeline import confounds

PERFECT = ("every COVID-19 image comes from ieee8023 and every normal image comes from rsna: "
           "a model can score perfectly by telling the sources apart")


def manifest(sources: list[str], labels: list[int], formats: list[str] | None = None):
    n = len(labels)
    return pd.DataFrame({
        "image_id": [f"i{k}" for k in range(n)], "patient_id": [f"p{k // 2}" for k in range(n)],
        "label": labels, "source": sources, "view": ["PA"] * n, "sex": ["F", "M"] * (n // 2),
        "age": [30.0, 65.0] * (n // 2), "width": [1024] * n, "height": [900] * n,
        "file_format": formats or ["png"] * n, "bit_depth": [8] * n,
        "colour_mode": ["grey"] * n,
    })


def test_perfect_source_confounding_is_stated_plainly():
    rep = confounds.report(manifest(["ieee8023"] * 10 + ["rsna"] * 10, [1] * 10 + [0] * 10))
    assert PERFECT in rep["warnings"]
    assert rep["separability"]["source"] == 1.0
    assert rep["counts"]["source"] == {"ieee8023": {"COVID-19": 10, "normal": 0},
                                       "rsna": {"COVID-19": 0, "normal": 10}}
    assert rep["patients"] == {"COVID-19": 5, "normal": 5}
    md = confounds.to_markdown(rep, "v1")
    assert f"> **Warning:** {PERFECT}." in md and "| ieee8023 | 10 | 0 |" in md


def test_mixed_sources_give_no_warning_and_nearly_confounded_formats_do():
    labels = [1, 0] * 25
    sources = ["a", "b"] * 12 + ["b", "a"] * 13  # each source holds both classes evenly
    formats = ["jpeg" if y else "dicom" for y in labels]
    formats[0] = "dicom"  # 49 of 50 images: the format predicts the class for 98 %
    rep = confounds.report(manifest(sources, labels, formats))
    assert not any("source" in w for w in rep["warnings"])
    (fmt,) = [w for w in rep["warnings"] if "file format" in w]
    assert "with 98% balanced accuracy" in fmt and "dicom" in fmt and "jpeg" in fmt
    assert rep["separability"]["file format"] == pytest.approx(0.98)


def test_class_imbalance_alone_raises_no_warning():
    """3 COVID-19 vs 97 normal images, both sources holding both classes in proportion: the
    source says nothing about the class (a raw majority share would be 97 %)."""
    labels = [1] * 3 + [0] * 97
    sources = ["a", "b", "a"] + ["a", "b"] * 48 + ["b"]
    rep = confounds.report(manifest(sources, labels))
    assert rep["warnings"] == [] and rep["separability"]["source"] < 0.7


def test_a_manifest_without_the_facts_reports_them_unknown():
    old = manifest(["s"] * 4, [1, 0, 1, 0]).drop(columns=["file_format", "bit_depth",
                                                          "colour_mode"])
    rep = confounds.report(old)
    assert rep["counts"]["file format"] == {"unknown": {"COVID-19": 2, "normal": 2}}
    assert rep["warnings"] == []


def test_the_real_samples_are_confounded_by_source_and_format(shared_data, tmp_path):
    from covid_pipeline.config import DataSettings
    from covid_pipeline.dataset import prepare
    from covid_pipeline.sources import SourceSpec

    info, _ = prepare([SourceSpec("ieee8023", str(shared_data / "ieee8023-2020-04")),
                       SourceSpec("rsna", str(shared_data / "rsna-pneumonia-format"))],
                      str(tmp_path), DataSettings(image_size=64))
    rep = confounds.write_report(info.uri, info.version)
    assert PERFECT in rep["warnings"]
    assert any(w.startswith("the file format alone tells the classes apart perfectly")
               for w in rep["warnings"])
    assert rep["counts"]["file format"]["dicom"] == {"COVID-19": 0, "normal": 22}
    assert (tmp_path / "datasets" / info.version / "confounds.md").read_text().startswith(
        f"# Confounds of dataset `{info.version}`")
