"""Shared fixtures: the real samples beside the project, synthetic data, image factories."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from netutil import free_port, stop

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real upstream samples); tests using it skip when it is absent."""
    if not (SHARED_DATA / "ieee8023-2020-04" / "metadata.csv").exists():
        pytest.skip(f"real samples not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def fresh_worker_memory() -> Iterator[None]:
    """Each test starts as a new worker process would: no backbone or feature file kept
    from an earlier test (covid_pipeline.backbone_cache, features.KEPT)."""
    yield
    from covid_pipeline import backbone_cache, features

    backbone_cache.forget()
    features.KEPT.clear()


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from covid_pipeline.synth import make_synthetic

    root = tmp_path_factory.mktemp("synth")
    make_synthetic(str(root), covid_patients=8, normals=16, size=160, seed=1)
    return root


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory):
    """One real Prefect API (a temporary server) for the session, shared with Dask workers."""
    home = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(home)
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    from flows.runtime import prefect_api as api

    with api() as url:
        yield url


@contextlib.contextmanager
def running_prefect_server(home: Path, **env_extra: str) -> Iterator[tuple[str, Path]]:
    """A real ``prefect server start`` (SQLite) on loopback: yields (API URL, log file)."""
    import subprocess
    import sys
    import time
    import urllib.request

    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api", **env_extra}
    env.pop("PREFECT_API_URL", None)
    log_path = home / "server.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host",
         "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.time() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"prefect server did not start: {log_path.read_text()}")
        time.sleep(1)
    try:
        yield api, log_path
    finally:
        stop(proc)
        log.close()


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory):
    """A real ``prefect server start`` (SQLite) on loopback; yields its API URL."""
    with running_prefect_server(tmp_path_factory.mktemp("prefect-server-home")) as (api, _):
        yield api
