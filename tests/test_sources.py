"""Each upstream layout and its historical variants, turned into manifest candidates."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from imagefiles import grey, png_bytes

from covid_pipeline.errors import ConfigError, DataError
from covid_pipeline.manifest import COVID, NORMAL
from covid_pipeline.sources import folder, ieee8023, parse_source, rsna
from covid_pipeline.synth import dicom_bytes


def write_csv(path: Path, header: list[str], rows: list[list[str]], encoding="utf-8") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding=encoding) as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def touch_image(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(grey(seed=seed)))


def test_early_2020_layout_patientid_and_leading_space_url(tmp_path):
    header = ["Patientid", "offset", "sex", "age", "finding", "view", "filename", " url"]
    write_csv(tmp_path / "metadata.csv", header, [
        ["1", "0", "M", "65", "COVID-19", "PA", "a.png", "http://x"],
        ["1", "3", "M", "65", "COVID-19", "AP", "b.png", "http://x"],
        ["2", "0", "F", "", "SARS", "PA", "c.png", "http://x"],
        ["3", "0", "F", "40", "COVID-19", "L", "d.png", "http://x"],
    ])
    for name in "abcd":
        touch_image(tmp_path / "images" / f"{name}.png")
    scan = ieee8023.scan(str(tmp_path), {})
    assert [c.image_id for c in scan.candidates] == ["ieee8023:images/a.png",
                                                     "ieee8023:images/b.png"]
    assert {c.patient_id for c in scan.candidates} == {"ieee8023:1"}
    assert all(c.label == COVID for c in scan.candidates)
    assert scan.candidates[0].sex == "M" and scan.candidates[0].age == 65.0
    assert scan.excluded == {"finding:SARS": 1, "view:L": 1}


def test_2020_04_layout_with_modality_and_folder(tmp_path):
    header = ["patientid", "finding", "view", "modality", "folder", "filename", "url"]
    write_csv(tmp_path / "metadata.csv", header, [
        ["5", "COVID-19, ARDS", "AP Supine", "X-ray", "images", "a.jpg", ""],
        ["5", "COVID-19", "Axial", "CT", "volumes", "ct.nii.gz", ""],
        ["6", "COVID-19", "AP semi erect", "X-ray", "images", "b.jpg", ""],
        ["7", "COVID-19", "AP erect", "X-ray", "images", "c.jpg", ""],
    ])
    scan = ieee8023.scan(str(tmp_path), {})
    assert [c.uri for c in scan.candidates] == [f"{tmp_path}/images/{n}" for n in
                                                ("a.jpg", "b.jpg", "c.jpg")]
    assert scan.excluded == {"modality:CT": 1}


def test_hierarchical_findings_and_no_finding_normals(tmp_path):
    header = ["patientid", "finding", "view", "modality", "filename"]
    write_csv(tmp_path / "metadata.csv", header, [
        ["1", "Pneumonia/Viral/COVID-19", "PA", "X-ray", "a.png"],
        ["2", "Pneumonia/Viral/SARS", "PA", "X-ray", "b.png"],
        ["3", "No finding", "PA", "X-ray", "c.png"],
        ["4", "No Finding", "AP", "X-ray", "d.png"],
    ])
    default = ieee8023.scan(str(tmp_path), {})
    assert [c.label for c in default.candidates] == [COVID]
    assert default.excluded == {"finding:Pneumonia/Viral/SARS": 1, "finding:No finding": 1,
                                "finding:No Finding": 1}
    with_normals = ieee8023.scan(str(tmp_path), {"no_finding_as_normal": True})
    assert [c.label for c in with_normals.candidates] == [COVID, NORMAL, NORMAL]


def test_view_filter_is_configurable(tmp_path):
    write_csv(tmp_path / "metadata.csv", ["patientid", "finding", "view", "filename"], [
        ["1", "COVID-19", "PA", "a.png"], ["1", "COVID-19", "AP", "b.png"],
        ["1", "COVID-19", "L", "c.png"]])
    scan = ieee8023.scan(str(tmp_path), {"views": ["pa", "L"]})
    assert [c.view for c in scan.candidates] == ["PA", "L"]


def test_fork_with_imagename_column(tmp_path):
    write_csv(tmp_path / "metadata.csv", ["patientid", "finding", "view", "imagename"], [
        ["9", "COVID-19", "PA", "x.png"], ["10", "No finding", "PA", "y.png"]])
    scan = ieee8023.scan(str(tmp_path), {"no_finding_as_normal": True})
    assert [(c.image_id, c.label) for c in scan.candidates] == [
        ("ieee8023:images/x.png", COVID), ("ieee8023:images/y.png", NORMAL)]


def test_fork_without_image_column_uses_patientid_as_file_name(tmp_path):
    write_csv(tmp_path / "metadata.csv", ["patientid", "finding", "view"], [
        ["p1", "COVID-19", "PA"], ["p2", "COVID-19", "PA"], ["p3", "COVID-19", "AP"]])
    touch_image(tmp_path / "images" / "p1.png")
    touch_image(tmp_path / "images" / "p2.jpeg")
    scan = ieee8023.scan(str(tmp_path), {})
    assert sorted(c.image_id for c in scan.candidates) == ["ieee8023:images/p1.png",
                                                           "ieee8023:images/p2.jpeg"]
    assert [r.reason for r in scan.rejected] == ["missing_file"]


def test_bom_and_latin1_metadata_are_read(tmp_path):
    header = ["patientid", "finding", "view", "filename", "location"]
    write_csv(tmp_path / "a" / "metadata.csv", header,
              [["1", "COVID-19", "PA", "a.png", "Zürich"]], encoding="utf-8-sig")
    write_csv(tmp_path / "b" / "metadata.csv", header,
              [["1", "COVID-19", "PA", "a.png", "Zürich"]], encoding="latin-1")
    for sub in "ab":
        assert len(ieee8023.scan(str(tmp_path / sub), {}).candidates) == 1


def test_missing_required_column_is_one_line_naming_file_and_columns(tmp_path):
    write_csv(tmp_path / "metadata.csv", ["patient", "finding", "filename"], [["1", "x", "a"]])
    with pytest.raises(DataError) as err:
        ieee8023.scan(str(tmp_path), {})
    msg = str(err.value)
    assert "\n" not in msg
    assert str(tmp_path / "metadata.csv") in msg
    assert "patientid" in msg and "view" in msg and "found: patient, finding, filename" in msg


def test_empty_metadata_file_is_an_error(tmp_path):
    (tmp_path / "metadata.csv").write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        ieee8023.scan(str(tmp_path), {})


@pytest.mark.parametrize("name", ["../outside.png", "/etc/passwd", "images/../../x.png"])
def test_paths_escaping_the_root_are_rejected(tmp_path, name):
    root = tmp_path / "ds"
    write_csv(root / "metadata.csv", ["patientid", "finding", "view", "folder", "filename"],
              [["1", "COVID-19", "PA", "", name]])
    (tmp_path / "outside.png").write_bytes(png_bytes(grey()))
    scan = ieee8023.scan(str(root), {})
    assert scan.candidates == []
    assert [r.reason for r in scan.rejected] == ["path_escapes_root"]


def test_symlink_leaving_the_root_is_rejected(tmp_path):
    root = tmp_path / "ds"
    write_csv(root / "metadata.csv", ["patientid", "finding", "view", "filename"],
              [["1", "COVID-19", "PA", "link.png"], ["2", "COVID-19", "PA", "ok.png"]])
    (tmp_path / "secret.png").write_bytes(png_bytes(grey()))
    touch_image(root / "images" / "ok.png")
    (root / "images" / "link.png").symlink_to(tmp_path / "secret.png")
    scan = ieee8023.scan(str(root), {})
    assert [c.image_id for c in scan.candidates] == ["ieee8023:images/ok.png"]
    assert [r.reason for r in scan.rejected] == ["path_escapes_root"]


def write_rsna(root: Path, classes: dict[str, str], boxes: dict[str, int]) -> None:
    info, labels = [], []
    for pid, cls in classes.items():
        for _ in range(boxes.get(pid, 1)):
            info.append([pid, cls])
            target = "0" if cls != "Lung Opacity" else "1"
            labels.append([pid, "", "", "", "", target])
    write_csv(root / "stage_2_detailed_class_info.csv", ["patientId", "class"], info)
    write_csv(root / "stage_2_train_labels.csv",
              ["patientId", "x", "y", "width", "height", "Target"], labels)
    for pid in classes:
        path = root / "stage_2_train_images" / f"{pid}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(dicom_bytes(grey(seed=len(pid)), f"PAT-{pid}"))


def test_rsna_normals_are_class_normal_not_target_zero(tmp_path):
    write_rsna(tmp_path, {"n1": "Normal", "n2": "Normal", "o1": "Lung Opacity",
                          "x1": "No Lung Opacity / Not Normal"}, boxes={"o1": 3})
    scan = rsna.scan(str(tmp_path), {})
    assert [c.image_id for c in scan.candidates] == ["rsna:n1", "rsna:n2"]
    assert all(c.label == NORMAL and c.fill_from_image for c in scan.candidates)
    assert scan.excluded == {"class:Lung Opacity": 1, "class:No Lung Opacity / Not Normal": 1}


def test_rsna_duplicate_box_rows_give_one_image(tmp_path):
    write_rsna(tmp_path, {"n1": "Normal"}, boxes={"n1": 3})
    assert len(rsna.scan(str(tmp_path), {}).candidates) == 1


def test_folder_layout(tmp_path):
    touch_image(tmp_path / "COVID-19" / "a.png", 1)
    touch_image(tmp_path / "COVID-19" / "sub" / "b.png", 2)
    touch_image(tmp_path / "normal" / "c.png", 3)
    touch_image(tmp_path / "pneumonia" / "d.png", 4)
    (tmp_path / "normal" / "notes.txt").write_text("x")
    scan = folder.scan(str(tmp_path), {})
    got = sorted((c.image_id, c.label) for c in scan.candidates)
    assert got == [("folder:COVID-19/a.png", COVID), ("folder:COVID-19/sub/b.png", COVID),
                   ("folder:normal/c.png", NORMAL)]
    assert scan.excluded == {"class:pneumonia": 1, "not_an_image_suffix": 1}


@pytest.mark.parametrize("text", ["ieee8023", "nope=/x", "=/x", "rsna="])
def test_bad_source_specs(text):
    with pytest.raises(ConfigError):  # a bad --source flag, not bad data
        parse_source(text)
