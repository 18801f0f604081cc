"""Acceptance: the data path on the real upstream samples in ../shared/data."""

from __future__ import annotations

import pandas as pd

from covid_pipeline.dataset import DataSettings, prepare
from covid_pipeline.shards import read_parquet
from covid_pipeline.sources import SourceSpec
from flows.cli import main


def test_real_samples_counts_balance_and_leak_free_folds(shared_data, tmp_path):
    specs = [SourceSpec("ieee8023", str(shared_data / "ieee8023-2020-04")),
             SourceSpec("rsna", str(shared_data / "rsna-pneumonia-format"))]
    info, report = prepare(specs, str(tmp_path), DataSettings(image_size=256))

    assert report["counts"]["ingested"] == {"ieee8023": {"COVID-19": 96}, "rsna": {"normal": 22}}
    assert report["excluded"]["ieee8023"] == {
        "modality:CT": 23, "view:L": 11, "finding:SARS": 11, "finding:Streptococcus": 6,
        "finding:ARDS": 3, "finding:Pneumocystis": 2, "finding:No Finding": 1}
    assert report["excluded"]["rsna"] == {"class:Lung Opacity": 21,
                                          "class:No Lung Opacity / Not Normal": 10}
    assert report["quarantined"] == {}
    assert report["balance"]["kept"] == {"COVID-19": 22, "normal": 22}
    assert report["balance"]["dropped"] == {"COVID-19": 74, "normal": 0}

    m = read_parquet(info.manifest_uri)
    assert len(m) == 44 and info.n_folds == 5
    assert m.groupby("patient_id")["fold"].nunique().max() == 1
    assert sorted(m["fold"].unique()) == [0, 1, 2, 3, 4]
    positives = m[m.label == 1]
    assert set(positives["view"]) <= {"PA", "AP", "AP Supine"}
    assert set(m[m.label == 0]["source"]) == {"rsna"}


def test_positives_before_balancing_come_from_66_patients(shared_data, tmp_path):
    from covid_pipeline.ingest import ingest

    result = ingest([SourceSpec("ieee8023", str(shared_data / "ieee8023-2020-04"))],
                    str(tmp_path), image_size=64)
    pos = result.manifest
    assert len(pos) == 96 and pos["patient_id"].nunique() == 66


def test_cli_ingest_prints_version_and_counts(shared_data, tmp_path, capsys):
    rc = main(["ingest", "--source", f"ieee8023={shared_data / 'ieee8023-2020-04'}",
               "--source", f"rsna={shared_data / 'rsna-pneumonia-format'}",
               "--out", str(tmp_path), "--image-size", "128", "--group-by", "none"])
    assert rc == 0
    out = capsys.readouterr().out
    version = out.splitlines()[0].split(": ")[1]
    assert "ieee8023: COVID-19 96" in out and "rsna: normal 22" in out
    m = pd.read_parquet(tmp_path / "datasets" / version / "manifest.parquet")
    assert len(m) == 44
