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


def test_each_model_has_a_home_worker_that_stays_with_the_models_and_workers():
    workers = {"tcp://10.0.0.2:1": {}, "tcp://10.0.0.1:1": {},
               "tcp://10.0.0.3:1": {"resources": {"GPU": 1}}}
    costs = {"VGG16": 9.0, "ResNet50": 4.0, "MobileNet": 1.0, "DenseNet121": 3.0}
    homes = cluster.home_workers(costs, workers, gpu=False)
    # heaviest first onto the least loaded worker, ties by address
    assert homes == {"VGG16": "tcp://10.0.0.1:1", "ResNet50": "tcp://10.0.0.2:1",
                     "DenseNet121": "tcp://10.0.0.3:1", "MobileNet": "tcp://10.0.0.3:1"}
    # a grown data set scales every cost alike: the same homes (the kept backbones serve)
    assert cluster.home_workers({m: 7 * c for m, c in costs.items()}, workers, False) == homes
    # GPU work on a cluster with CPU-only workers: no loose homes (they would loosen the
    # GPU resource restriction too); on GPU workers alone, homes as above
    assert cluster.home_workers(costs, workers, gpu=True) == {}
    gpus = {a: {"resources": {"GPU": 1}} for a in workers}
    assert cluster.home_workers(costs, gpus, gpu=True) == homes
    assert cluster.home_workers(costs, {}, gpu=False) == {}


def test_local_workers_share_the_cores_for_tensorflow():
    """The local cluster gives each worker its share of the machine's cores; TensorFlow's
    thread pools follow it instead of starting a thread per core in every worker."""
    import os

    from distributed import Client, LocalCluster

    spec = cluster.resolve("local", n_tasks=4, workers=2)
    share = max(1, (os.cpu_count() or 1) // 2)
    assert spec.cluster_kwargs["env"] == {"COVID_PIPELINE_TF_THREADS": str(share)}

    def pools() -> tuple[int, int]:
        import tensorflow as tf

        from covid_pipeline.tfsetup import configure_tensorflow

        configure_tensorflow()
        tf.constant(1.0) + 1.0  # the runtime starts with the pools set
        return (tf.config.threading.get_intra_op_parallelism_threads(),
                tf.config.threading.get_inter_op_parallelism_threads())

    with LocalCluster(**spec.cluster_kwargs) as local, Client(local) as client:
        assert set(client.run(pools).values()) == {(share, share)}
