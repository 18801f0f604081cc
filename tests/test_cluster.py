"""Cluster checks against real ``dask scheduler`` / ``dask worker`` processes on loopback."""

from __future__ import annotations

import pytest
from daskutil import dask_processes

from covid_pipeline import cluster
from covid_pipeline.errors import ConfigError

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def test_a_worker_with_several_task_threads_is_refused_with_the_fix():
    """TensorFlow's process settings and the compiled-head cache allow one task thread per
    worker process; a cluster that breaks that is refused before any work."""
    with dask_processes([["--nthreads", "1"], ["--nthreads", "2"]]) as address:
        spec = cluster.resolve(address, n_tasks=4)
        with pytest.raises(ConfigError, match=r"\(2 threads\).*--nthreads 1") as err:
            cluster.size(spec)
        assert "\n" not in str(err.value) and address in str(err.value)


def test_one_thread_workers_are_counted_with_their_gpus():
    with dask_processes([["--nthreads", "1"], ["--resources", "GPU=1"]]) as address:
        assert cluster.size(cluster.resolve(address, n_tasks=4)) == (2, 1)
