"""Sources and outputs on S3: a moto server on loopback, reached through s3fs."""

from __future__ import annotations

import io
import os

import pandas as pd
import pytest
from boards import cnn_rows
from s3util import moto_s3

from covid_pipeline.config import resolve_config

pytestmark = [pytest.mark.slow, pytest.mark.s3]
BUCKET = "covid-test"


@pytest.fixture(scope="module")
def s3(synth_root):
    """A moto S3 server on 127.0.0.1 holding the synthetic sources; env points s3fs at it."""
    from moto.server import ThreadedMotoServer

    with moto_s3(ThreadedMotoServer, BUCKET, synth_root, secret="planted-s3cr3t-4e9b") as fs:
        yield fs


def flow_run_tree(client, run_id) -> list:
    """``run_id`` and the ids of its subflow runs, at any depth."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    ids, parents = [run_id], [run_id]
    while parents:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=parents)))
        parents = [r.id for r in children if r.id not in ids]
        ids += parents
    return ids


def run_logs(client, ids: list) -> list:
    """Every log of the flow runs ``ids`` (and their task runs), page by page."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    logs: list = []
    while page := client.read_logs(limit=200, offset=len(logs), log_filter=LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=ids))):
        logs += page
    return logs


def test_ingest_reads_and_writes_s3(s3, capsys):
    from flows.cli import main

    assert main(["ingest", "--source", f"ieee8023=s3://{BUCKET}/data/ieee8023",
                 "--source", f"rsna=s3://{BUCKET}/data/rsna", "--folds", "2",
                 "--image-size", "64", "--out", f"s3://{BUCKET}/out"]) == 0
    out = capsys.readouterr().out
    version = out.splitlines()[0].split(": ")[1]
    assert "ieee8023: COVID-19 16" in out and "rsna: normal 16" in out
    manifest = pd.read_parquet(io.BytesIO(
        s3.cat_file(f"{BUCKET}/out/datasets/{version}/manifest.parquet")))
    assert len(manifest) == 32 and manifest["uri"].str.startswith("s3://").all()
    assert s3.exists(f"{BUCKET}/out/datasets/{version}/tfrecords/fold-1.tfrecord")


SMOKE_VGG16 = resolve_config("smoke", models=["VGG16"], folds=2, epochs=1, input_size=32,
                             image_size=64, weights="none")


def test_smoke_flow_with_sources_and_output_on_s3(s3, prefect_api):
    from flows.benchmark import covid_benchmark

    state = covid_benchmark(
        sources=[f"ieee8023=s3://{BUCKET}/data/ieee8023", f"rsna=s3://{BUCKET}/data/rsna"],
        out=f"s3://{BUCKET}/bench", config=SMOKE_VGG16, cluster="local", workers=1,
        return_state=True)
    result = state.result()
    board = cnn_rows(pd.read_csv(io.BytesIO(s3.cat_file(f"{BUCKET}/bench/leaderboard.csv"))))
    assert list(board["model"]) == ["VGG16"] and list(board["status"]) == ["ok"]
    assert result["leaderboard"]["csv"].startswith("s3://")
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    for key in s3.find(f"{BUCKET}/bench"):
        if key.endswith((".json", ".md", ".csv")):
            assert secret not in s3.cat_file(key).decode()
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.runtime import drain_to_api

    drain_to_api()  # this process's queued logs reach the API before they are read
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        ids = flow_run_tree(client, run_id)  # this run and its train-models subflow
        logs = run_logs(client, ids)
        mine = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=ids)))
        artifacts = client.read_artifacts()
    assert len(ids) == 2, ids
    (child,) = set(ids) - {run_id}
    messages = {i: [log.message for log in logs if log.flow_run_id == i] for i in ids}
    assert any(m.startswith("config ") for m in messages[run_id]), messages[run_id]
    assert any("fold results" in m for m in messages[child]), messages[child]
    assert not [log.message for log in logs if secret in log.message]
    assert mine and not [a.key for a in mine + artifacts if secret in str(a.data)]


def test_errors_never_show_the_secret(s3, capsys):
    from flows.cli import main

    rc = main(["ingest", "--source", "ieee8023=s3://no-such-bucket/data", "--folds", "2",
               "--out", f"s3://{BUCKET}/o2"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in err


def test_flow_takes_credentials_from_a_prefect_secret_block(s3, prefect_api, monkeypatch):
    """No AWS_* in the environment: the flow and its local workers get them from a block."""
    import s3fs
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client

    from flows.benchmark import covid_benchmark

    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    Secret(value={"aws_access_key_id": os.environ["AWS_ACCESS_KEY_ID"],
                  "aws_secret_access_key": secret,
                  "endpoint_url": os.environ["AWS_ENDPOINT_URL"]}).save("moto-s3",
                                                                        overwrite=True)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name)
    s3fs.S3FileSystem.clear_instance_cache()
    result = covid_benchmark(
        sources=[f"ieee8023=s3://{BUCKET}/data/ieee8023", f"rsna=s3://{BUCKET}/data/rsna"],
        out=f"s3://{BUCKET}/from-block", config=SMOKE_VGG16, cluster="local", workers=1,
        credentials_block="secret/moto-s3")
    assert result["leaderboard"]["csv"].startswith(f"s3://{BUCKET}/from-block/")
    board = cnn_rows(pd.read_csv(io.BytesIO(s3.cat_file(f"{BUCKET}/from-block/leaderboard.csv"))))
    assert list(board["status"]) == ["ok"]
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
        mine = [r for r in runs if r.parameters.get("credentials_block") == "secret/moto-s3"]
        assert mine and all(secret not in str(r.parameters) for r in runs)
        logs = client.read_logs(limit=200, log_filter=LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=[r.id for r in mine])))
    assert any("secret/moto-s3" in log.message for log in logs)
    assert not [log.message for log in logs if secret in log.message]


def test_feature_views_come_from_an_s3_listing(s3):
    """The extraction's reuse check lists sizes on S3 instead of reading every file."""
    import numpy as np

    from covid_pipeline import storage
    from covid_pipeline.features import encode_features, feature_uri, stored_views

    root, width = f"s3://{BUCKET}/features-listing/VGG16/abc", 16
    assert stored_views(root, width) == {}
    a, b = "a" * 64, "b" * 64
    storage.write_bytes(feature_uri(root, a), encode_features(np.ones((5, width), np.float16)))
    assert stored_views(root, width) == {a: 4}  # seen at once: no stale listing
    storage.write_bytes(feature_uri(root, b), encode_features(np.ones((1, width), np.float16)))
    assert stored_views(root, width) == {a: 4, b: 0}
