"""Ingest on the Dask cluster: a plan, chunks of files read as Prefect tasks on worker
processes, then a finish in the flow's process, give what an in-process ingest gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from covid_pipeline import dataset, storage
from covid_pipeline.config import resolve_config
from covid_pipeline.dataset import (
    DataSettings,
    balance_folds_step,
    ingest_step,
    plan_ingest_step,
    read_chunk_step,
    shard_step,
)
from covid_pipeline.sources import SourceSpec
from covid_pipeline.synth import make_synthetic

SETTINGS = DataSettings(folds=2, image_size=64)


def specs(root: Path) -> list[SourceSpec]:
    return [SourceSpec("ieee8023", str(root / "ieee8023")), SourceSpec("rsna", str(root / "rsna"))]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_synthetic(str(root), covid_patients=6, normals=14, size=96, seed=11)
    (root / "ieee8023" / "images" / "covid-100-1.png").write_bytes(b"broken")  # quarantined
    return root


def outputs(out: Path, staged: str) -> dict[str, bytes]:
    """What an ingest leaves that later steps read: the staged ingest, the dataset version,
    the normalised images and the ingest index."""
    info, _ = shard_step(balance_folds_step(staged, str(out), SETTINGS), str(out), SETTINGS)
    files = {f"staged/{k}": v for k, v in tree(Path(staged)).items()}
    files.update({f"dataset/{k}": v for k, v in tree(Path(info.uri)).items()})
    files.update({f"cache/{k}": v for k, v in tree(out / "cache").items()})
    files.update({f"index/{k}": v for k, v in tree(out / "index").items()})
    return files


def test_chunks_staged_by_an_interrupted_run_are_not_read_again(data, tmp_path, monkeypatch):
    monkeypatch.setattr(dataset, "CLUSTER_CHUNK", 8)
    out = str(tmp_path / "out")
    plan_uri, files, chunks = plan_ingest_step(specs(data), out, SETTINGS)
    assert (files, chunks) == (6 * 2 + 14, 4)
    assert [read_chunk_step(plan_uri, k, out, SETTINGS) for k in range(chunks)] == [8, 8, 8, 2]
    assert [read_chunk_step(plan_uri, k, out, SETTINGS) for k in range(chunks)] == [0] * 4
    Path(storage.local_path(plan_uri), "facts-00001.json").unlink()  # lost with a worker
    assert [read_chunk_step(plan_uri, k, out, SETTINGS) for k in range(chunks)] == [0, 8, 0, 0]


@pytest.mark.slow
def test_ingest_on_a_local_cluster_equals_the_in_process_ingest(data, tmp_path, monkeypatch,
                                                               prefect_api):
    """The flow's ingest with the threshold at one file: read-chunk tasks on a LocalCluster
    of two worker processes; every output byte-identical to an in-process ingest's."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from covid_pipeline import cluster as clusters
    from flows.benchmark import ingest

    monkeypatch.setattr(dataset, "CLUSTER_CHUNK", 8)
    in_process = tmp_path / "in-process"
    expected = outputs(in_process, ingest_step(specs(data), str(in_process), SETTINGS))

    cfg = resolve_config("smoke", folds=2, image_size=64, cluster_ingest_files=1)
    on_cluster = tmp_path / "on-cluster"

    @flow(name="ingest-test")
    def run() -> tuple[str, str]:
        from prefect.runtime import flow_run

        spec = clusters.resolve("local", 2, 2)
        assert spec.cluster_kwargs["processes"] and spec.cluster_kwargs["n_workers"] == 2
        return ingest(specs(data), str(on_cluster), cfg, "local", 2, spec), str(flow_run.id)

    staged, run_id = run()
    assert outputs(on_cluster, staged) == expected

    async def task_names() -> list[str]:
        async with get_client() as client:
            subflows = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id={"any_": [run_id]}))
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[run_id, *(f.id for f in subflows)])))
        return sorted(r.name for r in runs if r.state.is_completed())

    import asyncio

    names = asyncio.run(task_names())
    assert sum(n.startswith("read-chunk") for n in names) == 4, names
    assert "ingest" not in {n.rsplit("-", 1)[0] for n in names}, names  # no in-process read
