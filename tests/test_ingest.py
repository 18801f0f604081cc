"""Reading images: every quarantine reason, and good input beside bad is never lost."""

from __future__ import annotations

from pathlib import Path

from imagefiles import grey, png_bytes
from test_sources import write_csv

from covid_pipeline.ingest import ingest, normalised_uri
from covid_pipeline.sources import SourceSpec


def build(root: Path, files: dict[str, bytes], rows: list[list[str]]) -> SourceSpec:
    for name, data in files.items():
        path = root / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    write_csv(root / "metadata.csv", ["patientid", "finding", "view", "filename"], rows)
    return SourceSpec("ieee8023", str(root))


def test_each_bad_file_is_quarantined_with_its_reason_and_the_rest_goes_on(tmp_path):
    good = png_bytes(grey(seed=1))
    files = {
        "good.png": good,
        "copy.png": good,
        "empty.png": b"",
        "truncated.png": png_bytes(grey(seed=2))[:150],
        "text.png": b"not an image" * 50,
        "tiny.png": png_bytes(grey(32, 32, seed=3)),
        "good2.png": png_bytes(grey(seed=4)),
    }
    rows = [["1", "COVID-19", "PA", n] for n in files]
    rows += [["2", "COVID-19", "PA", "missing.png"], ["1", "COVID-19", "PA", "good2.png"],
             ["3", "COVID-19", "PA", "../escape.png"]]
    out = tmp_path / "out"
    result = ingest([build(tmp_path / "ds", files, rows)], str(out))
    assert sorted(result.manifest["image_id"]) == ["ieee8023:images/good.png",
                                                   "ieee8023:images/good2.png"]
    reasons = dict(zip(result.quarantine["image_id"], result.quarantine["reason"], strict=True))
    assert reasons == {
        "ieee8023:images/copy.png": "duplicate_image",
        "ieee8023:images/empty.png": "empty_file",
        "ieee8023:images/truncated.png": "corrupt",
        "ieee8023:images/text.png": "not_an_image",
        "ieee8023:images/tiny.png": "too_small",
        "ieee8023:images/missing.png": "missing_file",
        "ieee8023:images/good2.png": "duplicate_row",
        "ieee8023:images/../escape.png": "path_escapes_root",
    }
    row = result.manifest.set_index("image_id").loc["ieee8023:images/good.png"]
    assert (row["width"], row["height"], row["label_name"]) == (96, 128, "COVID-19")
    assert Path(normalised_uri(str(out), row["sha256"], 512)).exists()


def test_rsna_patient_id_sex_age_and_view_come_from_dicom(synth_root, tmp_path):
    result = ingest([SourceSpec("rsna", str(synth_root / "rsna"))], str(tmp_path))
    m = result.manifest
    assert len(m) == 16 and set(m["label"]) == {0}
    first = m.sort_values("image_id").iloc[0]
    assert first["patient_id"] == "rsna:00000000-0000-4000-8000-000000000000"
    assert first["view"] == "AP" and first["sex"] == "M" and first["age"] == 30.0
    assert set(m["width"]) == {160}
