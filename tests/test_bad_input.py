"""The catalogue of bad input, end to end through the ``covid-pipeline`` command line.

One data set holds every bad-file case next to good files: each bad one is quarantined with
its reason and every good one reaches the manifest. Bad parameters and unusable data sets
fail with one line on stderr (exit 2, no traceback) before anything is written.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from imagefiles import jpeg_bytes, png_bytes
from PIL import Image
from test_sources import write_csv

from covid_pipeline.shards import read_parquet
from covid_pipeline.synth import chest_image, dicom_bytes
from flows.cli import main

IEEE_HEADER = ["patientid", "finding", "view", "filename", "location"]
GOOD_COVID = ["c1.png", "c2.jpg", "c3.png", "c4.png"]
GOOD_NORMAL = ["n1", "n2", "n3", "n4"]


def pixels(seed: int, covid: bool, shape: tuple[int, int] = (112, 96)) -> np.ndarray:
    return chest_image(np.random.default_rng(seed), shape, covid)


def png16(px: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(px.astype(np.uint16) * 257).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png() -> bytes:
    """A small file that would decode to 144 megapixels."""
    buf = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buf, format="PNG")
    return buf.getvalue()


def dicom_without_pixels() -> bytes:
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(dicom_bytes(pixels(9, False), "NOPIX")))
    del ds.PixelData
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


def good_ieee(root: Path, n: int = 4) -> None:
    """``n`` COVID-19 images of ``n`` patients (grey PNG, JPEG, RGB PNG, 16-bit PNG)."""
    makers = [png_bytes, jpeg_bytes, lambda p: png_bytes(np.stack([p] * 3, -1)), png16]
    names = GOOD_COVID[:n]
    write_files(root / "images",
                {name: makers[i % 4](pixels(i, True)) for i, name in enumerate(names)})
    rows = [[str(i), "COVID-19", "PA", name, "Zürich"] for i, name in enumerate(names)]
    write_csv(root / "metadata.csv", IEEE_HEADER, rows, encoding="latin-1")


def rsna_csvs(root: Path, pids: list[str]) -> None:
    """Class info with a BOM and a repeated (box) row; labels in plain UTF-8."""
    info = [[pid, "Normal"] for pid in pids] + [[pids[0], "Normal"]]
    write_csv(root / "stage_2_detailed_class_info.csv", ["patientId", "class"], info,
              encoding="utf-8-sig")
    write_csv(root / "stage_2_train_labels.csv",
              ["patientId", "x", "y", "width", "height", "Target"],
              [[pid, "", "", "", "", "0"] for pid in pids])


def good_rsna(root: Path, pids: list[str] = GOOD_NORMAL) -> None:
    write_files(root / "stage_2_train_images", {
        f"{pid}.dcm": dicom_bytes(pixels(100 + i, False), f"PAT-{pid}", jpeg=i % 2 == 1,
                                  monochrome1=i == 2)
        for i, pid in enumerate(pids)
    })
    rsna_csvs(root, pids)


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """Good files and every bad-file case in one data set; returns (root, expected reasons)."""
    base = tmp_path_factory.mktemp("catalogue")
    ieee, rsna = base / "ieee8023", base / "rsna"
    outside = base / "outside.png"
    outside.write_bytes(png_bytes(pixels(50, True)))
    good_ieee(ieee)
    write_files(ieee / "images", {
        "truncated.jpg": jpeg_bytes(pixels(51, True))[:700],
        "truncated.png": png_bytes(pixels(52, True))[:300],
        "empty.png": b"",
        "bomb.png": bomb_png(),
    })
    (ieee / "images" / "link.png").symlink_to(outside)
    bad_names = ["truncated.jpg", "truncated.png", "empty.png", "bomb.png", "link.png",
                 "c1.png", "../outside.png", str(outside)]
    rows = [[str(i), "COVID-19", "PA", name, "Zürich"] for i, name in enumerate(GOOD_COVID)]
    rows += [["9", "COVID-19, ARDS", "AP", name, "São Paulo"] for name in bad_names]
    write_csv(ieee / "metadata.csv", IEEE_HEADER, rows, encoding="latin-1")

    good_rsna(rsna)
    dcm = dicom_bytes(pixels(60, False), "PAT-X")
    noise = np.random.default_rng(1).integers(0, 256, 600, dtype=np.uint8).tobytes()
    write_files(rsna / "stage_2_train_images", {
        "bad-corrupt.dcm": dcm[:128] + b"DICM" + noise,
        "bad-truncated.dcm": dcm[: len(dcm) // 2],
        "bad-nopixels.dcm": dicom_without_pixels(),
    })
    rsna_csvs(rsna, GOOD_NORMAL + ["bad-corrupt", "bad-truncated", "bad-nopixels"])
    expected = {
        "ieee8023:images/truncated.jpg": "corrupt",
        "ieee8023:images/truncated.png": "corrupt",
        "ieee8023:images/empty.png": "empty_file",
        "ieee8023:images/bomb.png": "too_large",
        "ieee8023:images/link.png": "path_escapes_root",
        "ieee8023:images/c1.png": "duplicate_row",
        "ieee8023:images/../outside.png": "path_escapes_root",
        f"ieee8023:{outside}": "path_escapes_root",
        "rsna:bad-corrupt": "corrupt",
        "rsna:bad-truncated": "corrupt",
        "rsna:bad-nopixels": "no_pixel_data",
    }
    return base, expected


def test_every_bad_file_is_quarantined_and_no_good_file_is_lost(catalogue, tmp_path, capsys):
    base, expected = catalogue
    out = tmp_path / "out"
    code = main(["ingest", "--source", f"ieee8023={base / 'ieee8023'}",
                 "--source", f"rsna={base / 'rsna'}", "--folds", "2", "--image-size", "64",
                 "--out", str(out)])
    assert code == 0
    stdout = capsys.readouterr().out
    version = stdout.splitlines()[0].removeprefix("dataset version: ")
    root = out / "datasets" / version
    quarantine = read_parquet(str(root / "quarantine.parquet"))
    assert dict(zip(quarantine["image_id"], quarantine["reason"], strict=True)) == expected
    assert all(quarantine["detail"].str.len() > 0)
    manifest = read_parquet(str(root / "manifest.parquet"))
    assert sorted(manifest["image_id"]) == sorted(
        [f"ieee8023:images/{n}" for n in GOOD_COVID] + [f"rsna:{p}" for p in GOOD_NORMAL])
    assert ("quarantined: corrupt 4, duplicate_row 1, empty_file 1, no_pixel_data 1, "
            "path_escapes_root 3, too_large 1") in stdout
    assert "dropped COVID-19 0, normal 0" in stdout


# --- one-line errors, validated before anything is written ---------------------------------


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small valid data set: 4 COVID-19 patients (ieee8023), 4 normals (RSNA)."""
    base = tmp_path_factory.mktemp("good")
    good_ieee(base / "ieee8023")
    good_rsna(base / "rsna")
    return base


def empty_metadata(root: Path) -> None:
    (root / "ieee8023" / "metadata.csv").write_bytes(b"")


def metadata_without_view(root: Path) -> None:
    write_csv(root / "ieee8023" / "metadata.csv", ["patientid", "finding", "filename"],
              [["1", "COVID-19", "c1.png"]])


def sources(root: Path, kinds: tuple[str, ...] = ("ieee8023", "rsna")) -> list[str]:
    return [arg for kind in kinds for arg in ("--source", f"{kind}={root / kind}")]


INGEST_CASES = {
    # case: (mutation of a copy of the good data set, extra args, kinds, needles)
    "empty-metadata": (empty_metadata, [], ("ieee8023", "rsna"),
                       ["metadata.csv", "empty"]),
    "missing-columns": (metadata_without_view, [], ("ieee8023", "rsna"),
                        ["metadata.csv", "missing required column(s) view"]),
    "one-class-only": (None, [], ("ieee8023",), ["no normal images", "add a source"]),
    "class-emptied-by-filters": (None, ["--view-filter", "XYZ"], ("ieee8023", "rsna"),
                                 ["no COVID-19 images", "relax the filters"]),
    "fewer-patients-than-folds": (None, ["--folds", "50"], ("ieee8023", "rsna"),
                                  ["fewer than --folds 50", "lower --folds"]),
    "zero-folds": (None, ["--folds", "0"], ("ieee8023", "rsna"),
                   ["folds must be at least 2, got 0"]),
}


def run_cli(args: list[str], driver: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", driver, *args] if driver else [
        sys.executable, "-m", "flows.cli", *args]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def assert_one_line_error(proc: subprocess.CompletedProcess, needles: list[str]) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("covid-pipeline: error: ")
    for needle in needles:
        assert needle in lines[0]


def written(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else []


@pytest.mark.parametrize("case", list(INGEST_CASES))
def test_unusable_data_fails_in_one_line_before_writing(case, good, tmp_path):
    import shutil

    mutate, extra, kinds, needles = INGEST_CASES[case]
    root = tmp_path / "data"
    shutil.copytree(good, root, symlinks=True)
    if mutate:
        mutate(root)
    out = tmp_path / "out"
    # argparse keeps the last --folds: a case's own value overrides the 2 given first
    proc = run_cli(["ingest", *sources(root, kinds), "--folds", "2", *extra,
                    "--image-size", "64", "--out", str(out)])
    assert_one_line_error(proc, needles)
    assert written(out) == []


# ``run`` must reject bad parameters before Prefect starts: the driver replaces the flow and
# the temporary Prefect API by tripwires that fail loudly (exit 3) if they are ever reached.
RUN_DRIVER = """
import sys, types
def started(*a, **k):
    print("covid-pipeline: work started: Prefect was reached", file=sys.stderr)
    raise SystemExit(3)
bench = types.ModuleType("flows.benchmark"); bench.covid_benchmark = started
rt = types.ModuleType("flows.runtime"); rt.prefect_api = started
sys.modules.update({"flows.benchmark": bench, "flows.runtime": rt})
from flows.cli import main
sys.exit(main(sys.argv[1:]))
"""

RUN_CASES = {
    "unknown-model": (["--preset", "smoke", "--models", "ResNet51"], ["ResNet51"]),
    "zero-epochs": (["--preset", "smoke", "--epochs", "0"], ["epochs", "0"]),
    "negative-epochs": (["--preset", "smoke", "--epochs", "-1"], ["epochs", "-1"]),
    "unknown-preset": (["--preset", "nope"], ["nope", "smoke"]),
    "zero-folds": (["--preset", "smoke", "--folds", "0"], ["folds"]),
    # the same bounds as ingest: once only the flow checked 64..2048, after Prefect started
    "image-size-40": (["--preset", "smoke", "--image-size", "40"],
                      ["image_size must be in [64, 2048], got 40"]),
    "missing-weights-file": (["--preset", "smoke", "--weights", "/nonexistent/vgg16.h5"],
                             ["--weights '/nonexistent/vgg16.h5'"]),
    "zero-workers": (["--preset", "smoke", "--workers", "0"], ["--workers 0"]),
    "unknown-cluster": (["--preset", "smoke", "--cluster", "bogus"], ["--cluster", "bogus"]),
}


def test_run_driver_reaches_the_tripwire_when_parameters_are_fine(good, tmp_path):
    proc = run_cli(["run", "--preset", "smoke", "--weights", "none", *sources(good), "--out",
                    str(tmp_path / "o")],
                   RUN_DRIVER)
    assert proc.returncode == 3 and "Prefect was reached" in proc.stderr


@pytest.mark.parametrize("case", list(RUN_CASES))
def test_bad_run_parameters_fail_in_one_line_before_prefect(case, good, tmp_path):
    args, needles = RUN_CASES[case]
    out = tmp_path / "out"
    proc = run_cli(["run", *args, *sources(good), "--out", str(out)], RUN_DRIVER)
    assert_one_line_error(proc, needles)
    assert written(out) == []

