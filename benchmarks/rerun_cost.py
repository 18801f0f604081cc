"""What a re-run costs after a data update, against a cold run, measured in one run here.

On a synthetic data set of ``--images`` N images (default 1,500: 250 COVID-19 patients x 2
PNG/JPEG images and 1,000 normal DICOMs) at ``--size`` px (default 1,024):

1. the decode-only limit: read + decode + normalise of every source file in a tight loop,
   on a thread pool as wide as the ingest's (images/s);
2. a cold ingest of the same files (``covid_pipeline.ingest.ingest``: read, hash, decode,
   normalise, write the PNG, perceptual hash) and its throughput against (1): 3 passes of
   (2) between 4 of (1), each against the mean of the two beside it, the median ratio kept
   (the machine's speed drifts between minutes);
3. the whole benchmark flow (smoke models, ``--weights none``, 2 Dask worker processes)
   for a cold run, an unchanged re-run and a re-run after adding 10 normal DICOMs, each as
   a share of the cold run's wall time (one temporary Prefect API for the three, started
   before the clock; ``--cluster standing``, the default: one cluster for the three, also
   started before the clock, as a deployment's standing cluster; ``--cluster local``: each
   run starts and stops its own, paying ~10 s for it);
4. the peak RSS of the data path plus one model's feature extraction and one fold's head
   (a child process each, on its own synthetic set at ``--rss-size`` px, default 512, and
   normalised to that size: holding every normalised image at once would add N x 256 KiB)
   for N and 2N images.

    python benchmarks/rerun_cost.py [--images 1500] [--size 1024] [--cluster standing|local]
                                    [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from covid_pipeline import imaging, storage  # noqa: E402
from covid_pipeline.synth import add_normals, make_synthetic  # noqa: E402

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")
INGEST_PASSES = 3  # cold ingests, each between two decode-only passes


def fmt(rates: list[float]) -> str:
    return ", ".join(f"{r:.0f}" for r in rates)


def synthetic(root: Path, n: int, size: int) -> list[str]:
    patients = n // 6
    make_synthetic(str(root), covid_patients=patients, images_per_patient=2,
                   normals=n - 2 * patients, size=size, seed=0)
    return [f"ieee8023={root / 'ieee8023'}", f"rsna={root / 'rsna'}"]


def source_files(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def decode_only(files: list[str], size: int, workers: int) -> float:
    """Images/s of read + decode + normalise, nothing else."""
    def one(path: str) -> None:
        with open(path, "rb") as fh:
            imaging.normalise(imaging.decode(fh.read()).pixels, size)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, files))
    return len(files) / (time.perf_counter() - t0)


def cold_ingest(sources: list[str], out: Path, size: int) -> tuple[float, int]:
    """Images/s (and files read) of one ingest into the empty folder ``out``."""
    from covid_pipeline.ingest import ingest
    from covid_pipeline.sources import parse_source

    t0 = time.perf_counter()
    result = ingest([parse_source(s) for s in sources], str(out), image_size=size)
    seconds = time.perf_counter() - t0
    read = len(result.manifest) + len(result.quarantine)
    return read / seconds, read


@contextlib.contextmanager
def dask_cluster(kind: str) -> Iterator[str]:
    """``local``: each flow run starts (and stops) its own LocalCluster of 2 workers.
    ``standing``: the LocalCluster ``--cluster local --workers 2`` would start, started
    once before the clock, whose address every run gets, as a deployment's standing
    cluster."""
    if kind == "local":
        yield "local"
        return
    from distributed import LocalCluster

    from covid_pipeline import cluster as clusters

    # what `--cluster local --workers 2` starts (each worker its share of the cores)
    with LocalCluster(**clusters.resolve("local", 2, 2).cluster_kwargs) as cluster:
        yield cluster.scheduler_address


def flow_runs(sources: list[str], rsna: Path, out: Path, size: int,
              cluster_kind: str) -> dict[str, float]:
    from covid_pipeline.config import resolve_config
    from flows.benchmark import covid_benchmark
    from flows.runtime import prefect_api

    cfg = resolve_config("smoke", weights="none")
    walls: dict[str, float] = {}
    with prefect_api(), dask_cluster(cluster_kind) as cluster:
        for label in ("cold", "unchanged", "plus_10"):
            if label == "plus_10":
                add_normals(str(rsna), 10, size=size, seed=7)
            t0 = time.perf_counter()
            result = covid_benchmark(sources=sources, out=str(out), config=cfg,
                                     cluster=cluster, workers=2)
            walls[label] = time.perf_counter() - t0
            print(f"  flow {label}: {walls[label]:.1f} s, {result['reused']} fold results "
                  f"reused, extracted {[e['extracted_images'] for e in result['extraction']]}",
                  flush=True)
    return walls


def rss_child(n: int, size: int) -> None:
    """The data path + ResNet50's extraction (one view) + one fold's head, then print the
    peak RSS in MiB."""
    from covid_pipeline.config import resolve_config
    from covid_pipeline.dataset import DataSettings, prepare
    from covid_pipeline.features import extract_features
    from covid_pipeline.sources import parse_source
    from covid_pipeline.training import train_fold

    with tempfile.TemporaryDirectory(prefix="rerun-rss-") as tmp:
        sources = synthetic(Path(tmp) / "data", n, size)
        out = str(Path(tmp) / "out")
        cfg = resolve_config("smoke", models="ResNet50", weights="none", views=1, epochs=1,
                             image_size=size)
        # normalised images at the source size: what holding them all would cost shows
        info, _ = prepare([parse_source(s) for s in sources], out,
                          DataSettings(**{**cfg.data.as_dict(), "image_size": size}))
        extract_features(info.uri, "ResNet50", cfg, out)
        train_fold(info.uri, "ResNet50", 0, cfg, out)
    print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                      / 1024}))


def peak_rss(n: int, size: int) -> float:
    proc = subprocess.run([sys.executable, __file__, "--rss-child", str(n), "--size",
                           str(size)], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mib"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=1500)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--json", default=None)
    p.add_argument("--cluster", choices=("standing", "local"), default="standing",
                   help="standing: one cluster for the three runs, started before the clock "
                        "(a deployment's); local: each run starts its own")
    p.add_argument("--rss-size", type=int, default=512)
    p.add_argument("--skip-rss", action="store_true")
    p.add_argument("--rss-only", action="store_true", help="only the peak RSS at N and 2N")
    p.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.size)
        return
    if args.rss_only:
        rss = {"N": peak_rss(args.images, args.rss_size),
               "2N": peak_rss(2 * args.images, args.rss_size)}
        print(json.dumps({"images": args.images, "rss_size": args.rss_size,
                          "peak_rss_mib": rss, "rss_ratio_2n_n": rss["2N"] / rss["N"]}))
        return
    from covid_pipeline.config import resolve_config

    image_size = resolve_config("smoke").image_size
    workers = min(16, 2 * (os.cpu_count() or 1) + 2)  # the ingest's thread pool
    with tempfile.TemporaryDirectory(prefix="rerun-cost-") as tmp:
        t0 = time.perf_counter()
        sources = synthetic(Path(tmp) / "data", args.images, args.size)
        files = source_files(Path(tmp) / "data")
        print(f"synthetic data: {len(files)} files at {args.size} px in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        # interleaved passes (decode-only, cold ingest, decode-only, ...): this VM's speed
        # drifted by up to +-30 % between minutes; each ingest pass is set against the mean
        # of the decode-only passes either side of it, and the median of those ratios kept
        limits, rates = [decode_only(files, image_size, workers)], []
        for k in range(INGEST_PASSES):
            rate, read = cold_ingest(sources, Path(tmp) / f"ingest-only-{k}", image_size)
            rates.append(rate)
            limits.append(decode_only(files, image_size, workers))
        ratios = [r / statistics.mean(limits[k : k + 2]) for k, r in enumerate(rates)]
        limit, rate, ratio = (statistics.median(x) for x in (limits, rates, ratios))
        print(f"decode-only {limit:.1f} images/s (passes {fmt(limits)}); cold ingest "
              f"{rate:.1f} images/s (passes {fmt(rates)}; {read} files read): {ratio:.2f} x "
              f"(passes {', '.join(f'{x:.2f}' for x in ratios)})", flush=True)
        walls = flow_runs(sources, Path(tmp) / "data" / "rsna", Path(tmp) / "out", args.size,
                          args.cluster)
    rss = {} if args.skip_rss else {"N": peak_rss(args.images, args.rss_size),
                                    "2N": peak_rss(2 * args.images, args.rss_size)}
    report = {
        "images": args.images, "size": args.size, "rss_size": args.rss_size,
        "cluster": args.cluster,
        "cores": os.cpu_count(),
        "decode_only_images_per_s": limit, "cold_ingest_images_per_s": rate,
        "decode_only_passes": limits, "cold_ingest_passes": rates, "ingest_ratios": ratios,
        "ingest_vs_decode_only": ratio,
        "flow_seconds": walls,
        "unchanged_share": walls["unchanged"] / walls["cold"],
        "plus_10_share": walls["plus_10"] / walls["cold"],
        "peak_rss_mib": rss,
        "rss_ratio_2n_n": rss["2N"] / rss["N"] if rss else None,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        storage.write_json(args.json, report)


if __name__ == "__main__":
    main()
