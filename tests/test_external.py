"""External test sets: their own dataset version without the CV's images, single-class
metrics, and a whole run with an external set built from the real samples."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from boards import cnn_rows
from PIL import Image
from sklearn import metrics as sk

from covid_pipeline import external, layout
from covid_pipeline.config import DataSettings
from covid_pipeline.dataset import prepare
from covid_pipeline.errors import DataError
from covid_pipeline.shards import load_dataset, read_parquet
from covid_pipeline.sources import SourceSpec

SMOKE_DATA = DataSettings(folds=3, image_size=128)


def test_single_class_sets_report_only_the_recall_that_exists():
    y = np.zeros(6, np.int64)
    p = np.array([0.1, 0.7, 0.2, 0.4, 0.9, 0.3])
    values = external.external_metrics(y, p)
    assert values["specificity"] == pytest.approx(sk.recall_score(y, p > 0.5, pos_label=0))
    for name in ("sensitivity", "precision", "f1", "balanced_accuracy", "auc"):
        assert values[name] is None, name
    assert external.defined_metrics(y) == ("specificity",)
    assert external.missing_note(y).startswith("only normal images: AUC and balanced "
                                               "accuracy need COVID-19 images too")
    ones = np.ones(6, np.int64)
    values = external.external_metrics(ones, p)
    assert values["sensitivity"] == pytest.approx(2 / 6) and values["specificity"] is None
    assert external.missing_note(ones).endswith("so only sensitivity (the share of "
                                                "COVID-19 images called so) is reported")
    both = np.array([0, 0, 0, 1, 1, 1])
    assert external.missing_note(both) is None
    assert external.external_metrics(both, p)["auc"] == pytest.approx(
        sk.roc_auc_score(both, p))


def real_specs(shared_data) -> list[SourceSpec]:
    return [SourceSpec("ieee8023", str(shared_data / "ieee8023-2020-04")),
            SourceSpec("rsna", str(shared_data / "rsna-pneumonia-format"))]


def class_folder_copy(shared_data, cv_manifest: pd.DataFrame, root, covid_new: int,
                      covid_in_cv: int, normals: bool) -> dict[str, int]:
    """A class-folder copy of part of the real samples: ``covid_new`` ieee8023 COVID-19
    images the CV does not hold, ``covid_in_cv`` it does, and (``normals``) the two
    'No Finding' images plus two of the CV's normal DICOMs. Returns the expected counts."""
    ieee = shared_data / "ieee8023-2020-04"
    meta = pd.read_csv(ieee / "metadata.csv")
    in_cv = set(cv_manifest["uri"].astype(str))
    positives = meta[meta["finding"].astype(str).str.contains("COVID-19")
                     & meta["view"].isin(["PA", "AP"]) & (meta["modality"] == "X-ray")]
    files = [ieee / "images" / f for f in positives["filename"]]
    new = [f for f in files if str(f) not in in_cv][:covid_new]
    old = [f for f in files if str(f) in in_cv][:covid_in_cv]
    (root / "covid").mkdir(parents=True)
    for f in new + old:
        shutil.copy(f, root / "covid" / f.name)
    dropped = len(old)
    normal = copies = 0
    if normals:
        (root / "normal").mkdir()
        # SOURCES.csv says which public image each RSNA-layout file was made from: a 'No
        # Finding' image that one was made from is a copy of a CV normal
        made_from = set(pd.read_csv(shared_data / "rsna-pneumonia-format" / "SOURCES.csv")
                        ["source_image"].astype(str))
        for name in meta[meta["finding"] == "No Finding"]["filename"]:
            shutil.copy(ieee / "images" / name, root / "normal" / name)
            if f"ieee8023/{name}" in made_from:
                copies += 1
            else:
                normal += 1
        cv_normals = cv_manifest[cv_manifest["label"] == 0]["uri"].astype(str).tolist()[:2]
        for uri in cv_normals:
            shutil.copy(uri, root / "normal" / uri.rsplit("/", 1)[-1])
        dropped += len(cv_normals)
    return {"covid": len(new), "normal": normal, "dropped": dropped, "copies": copies}


@pytest.mark.slow
def test_external_version_drops_cv_images_and_is_neither_balanced_nor_folded(
        shared_data, tmp_path):
    out = str(tmp_path / "out")
    cv, _ = prepare(real_specs(shared_data), out, SMOKE_DATA)
    cv_manifest = read_parquet(layout.dataset_manifest(cv.uri))
    expected = class_folder_copy(shared_data, cv_manifest, tmp_path / "ext", 5, 3, True)
    info, report = external.prepare_external([SourceSpec("folder", str(tmp_path / "ext"))],
                                             out, SMOKE_DATA, cv.uri)
    assert report["dropped_in_cv"] == expected["dropped"] == 5
    # one 'No Finding' image is the source of an RSNA-layout normal of the CV: a copy
    assert report["dropped_copies"] == expected["copies"] == 1
    assert info.counts == {"COVID-19": 5, "normal": 1}  # 5 vs 1: not balanced
    assert info.n_folds == 1 and info.version != cv.version
    manifest = read_parquet(layout.dataset_manifest(info.uri))
    assert (manifest["fold"] == 0).all()
    assert not set(manifest["sha256"]) & set(cv_manifest["sha256"])
    assert load_dataset(info.uri).counts == info.counts

    # a re-encoded copy of a CV image (another sha256) is dropped as a copy
    copy_root = tmp_path / "with-copy"
    shutil.copytree(tmp_path / "ext", copy_root)
    cv_covid = cv_manifest[cv_manifest["label"] == 1]["uri"].astype(str).iloc[0]
    with Image.open(cv_covid) as img:
        img.convert("L").save(copy_root / "covid" / "re-encoded.jpg", quality=60)
    info2, report2 = external.prepare_external([SourceSpec("folder", str(copy_root))], out,
                                               SMOKE_DATA, cv.uri)
    assert report2["dropped_copies"] == report["dropped_copies"] + 1
    assert info2.counts == info.counts

    everything_in_cv = tmp_path / "all-in-cv"
    (everything_in_cv / "normal").mkdir(parents=True)
    for uri in cv_manifest["uri"].astype(str)[:2]:
        shutil.copy(uri, everything_in_cv / "normal" / uri.rsplit("/", 1)[-1])
    with pytest.raises(DataError, match=r"no usable image left \(2 ingested: 2 also in the "
                                        r"cross-validation data, same sha256, 0 copies"):
        external.prepare_external([SourceSpec("folder", str(everything_in_cv))], out,
                                  SMOKE_DATA, cv.uri)


@pytest.mark.slow
@pytest.mark.flow
@pytest.mark.cluster
@pytest.mark.usefixtures("prefect_api")
def test_run_with_two_class_then_single_class_external_sets(shared_data, tmp_path):
    """The smoke preset on the real samples with an external class-folder copy of other
    real images (both classes), then with a COVID-19-only one on the same --out: the
    external columns, their intervals, the dropped count and the note for the missing AUC;
    the second run reuses every CV fold."""
    out = tmp_path / "out"
    cv, _ = prepare(real_specs(shared_data), str(out), SMOKE_DATA)
    cv_manifest = read_parquet(layout.dataset_manifest(cv.uri))
    both = class_folder_copy(shared_data, cv_manifest, tmp_path / "both", 6, 2, True)
    only = class_folder_copy(shared_data, cv_manifest, tmp_path / "covid-only", 6, 1, False)
    base = [sys.executable, "-m", "flows.cli", "run", "--preset", "smoke", "--weights", "none",
            "--workers", "2",
            "--source", f"ieee8023={shared_data / 'ieee8023-2020-04'}",
            "--source", f"rsna={shared_data / 'rsna-pneumonia-format'}", "--out", str(out)]

    proc = subprocess.run([*base, "--external", f"folder={tmp_path / 'both'}"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    board = cnn_rows(pd.read_csv(out / "leaderboard.csv")).set_index("model")
    md = (out / "leaderboard.md").read_text()
    assert (board["external_status"] == "ok").all()
    assert (board["external_n"] == both["covid"] + both["normal"]).all()
    for model in ("ResNet50", "VGG16"):
        for m in ("auc", "balanced_accuracy", "sensitivity", "specificity", "f1"):
            low, point, high = (board.loc[model, f"external_{m}{s}"]
                                for s in ("_ci_low", "", "_ci_high"))
            assert low <= point <= high, (model, m)
        preds = read_parquet(f"{out}/results/{cv.version}/{board.loc[model, 'config_hash']}/"
                             f"{model}/external-{external_version(md)}.predictions.parquet")
        assert board.loc[model, "external_auc"] == pytest.approx(
            sk.roc_auc_score(preds["label"], preds["prob_covid"]))
    assert (f"Images per class: COVID-19 {both['covid']}, normal {both['normal']}; "
            f"{both['dropped']} images dropped as also in the cross-validation data (same "
            f"sha256), {both['copies']} as copies of its images") in md

    proc = subprocess.run([*base, "--external", f"folder={tmp_path / 'covid-only'}"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    printed = proc.stdout
    assert "fold results reused from earlier runs: 6" in printed  # 2 models x 3 folds
    assert f"{only['dropped']} images dropped as also in the CV data" in printed
    board = cnn_rows(pd.read_csv(out / "leaderboard.csv")).set_index("model")
    md = (out / "leaderboard.md").read_text()
    assert (board["external_n"] == only["covid"]).all()
    for model in ("ResNet50", "VGG16"):
        assert 0 <= board.loc[model, "external_sensitivity"] <= 1
        assert board.loc[model, "external_sensitivity_ci_low"] <= board.loc[
            model, "external_sensitivity"] <= board.loc[model, "external_sensitivity_ci_high"]
        for m in ("auc", "balanced_accuracy", "specificity", "f1"):
            assert np.isnan(board.loc[model, f"external_{m}"]), (model, m)
    assert "> **Note:** only COVID-19 images: AUC and balanced accuracy need normal " \
           "images too (and F1 says nothing without them), so only sensitivity" in md
    assert f"{only['dropped']} images dropped as also in the cross-validation data" in md


def external_version(markdown: str) -> str:
    return markdown.split("## External test set `", 1)[1].split("`", 1)[0]


@pytest.mark.slow
@pytest.mark.flow
@pytest.mark.usefixtures("prefect_api")
def test_an_external_set_that_cannot_be_made_fails_alone(synth_root, tmp_path):
    """Every external image is also a CV image: the run still writes the CV board, which
    says why the external section is missing, and the result carries the error."""
    from covid_pipeline.config import resolve_config
    from flows.benchmark import covid_benchmark

    normal = tmp_path / "ext" / "normal"
    normal.mkdir(parents=True)
    for i in (0, 2):
        name = f"00000000-0000-4000-8000-{i:012d}.dcm"
        shutil.copy(synth_root / "rsna" / "stage_2_train_images" / name, normal / name)
    cfg = resolve_config("smoke", models="VGG16", folds=2, epochs=1, input_size=32,
                         image_size=64, weights="none", control_models="none")
    result = covid_benchmark(
        sources=[f"ieee8023={synth_root / 'ieee8023'}", f"rsna={synth_root / 'rsna'}"],
        out=str(tmp_path / "out"), config=cfg, cluster="threads",
        external=[f"folder={tmp_path / 'ext'}"])
    assert "no usable image left (2 ingested: 2 also in the cross-validation data" in (
        result["external"]["error"])
    assert not result["failures"]
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "## External test set\n\nFailed: DataError: external set folder=" in md
    assert "| VGG16 |" in md
