"""``covid-pipeline``: the library's commands plus ``run`` and ``demo``, which run the flow.

The flow commands live here, beside the flows, so that the library never imports Prefect.
Every setting is validated by the config model before Prefect is imported (``import
prefect`` alone takes seconds): a bad value costs one line and exit 2, with no Prefect
output.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence

from covid_pipeline import cli, layout, storage, tracking, weights
from covid_pipeline.cluster import check as check_cluster
from covid_pipeline.config import DATA_FIELDS, BenchmarkConfig, cli_fields, resolve_config
from covid_pipeline.errors import ConfigError
from covid_pipeline.sources import parse_source
from covid_pipeline.synth import make_synthetic
from flows import progress
from flows.credentials import check_block_name


def add_run_options(p: argparse.ArgumentParser, out_default: str | None = None) -> None:
    cli.add_data_options(p)
    p.add_argument("--external", action="append", default=[], metavar="KIND=URI",
                   help="an external test set (any source layout; repeatable): never "
                        "balanced or folded, images also in the CV data dropped; each "
                        "model's head trained on all CV images predicts it")
    p.add_argument("--preset", default=None, help="a preset name (see `models --presets`)")
    p.add_argument("--config", default=None, help="a YAML config file (keys as in presets)")
    cli.add_config_options(p, [k for k in cli_fields() if k not in DATA_FIELDS])
    p.add_argument("--cluster", default="local",
                   help="local, cuda, or a Dask scheduler address (tcp://host:8786)")
    p.add_argument("--workers", type=int, default=None, help="local cluster: worker processes")
    p.add_argument("--out", required=out_default is None, default=out_default,
                   help="output folder or s3:// URI")
    p.add_argument("--credentials-block", default=None, metavar="secret/NAME",
                   help="object-storage credentials from a Prefect block: secret/NAME "
                        "(default: the environment)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print only warnings, errors and the final summary (no progress "
                        "display, no Prefect log lines below warnings)")


def resolve_run(args: argparse.Namespace, sources: list[str], preset: str) -> BenchmarkConfig:
    """Validate every parameter (cheaply, before Prefect starts); return the config."""
    cfg = resolve_config(preset=preset, config_file=args.config, **cli.config_overrides(args))
    weights.missing(cfg)  # a --weights path that does not exist is refused here, cheaply
    if tracking.tracking_uri(cfg):
        tracking.check_installed()
    if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("--tensorboard: the tensorboard package is not installed; install "
                          "it with `pip install 'covid-pipeline[tensorboard]'`")
    for s in [*sources, *args.external]:
        parse_source(s)
    check_cluster(args.cluster)
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: give at least 1 worker process")
    if args.credentials_block:
        check_block_name(args.credentials_block)
    # last: missing weights stop the run in one line before Prefect starts (online, the
    # default imagenet weights are fetched now); the flow checks again for deployments
    weights.preflight(cfg)
    return cfg


def run_benchmark(args: argparse.Namespace, sources: list[str], cfg: BenchmarkConfig) -> dict:
    """Start Prefect (a temporary API unless one is configured) and run the flow."""
    # Prefect is imported here, not at the top: it costs seconds and is not needed for
    # --help or for a bad parameter.
    with progress.terminal(args.quiet):
        from flows.benchmark import covid_benchmark
        from flows.runtime import prefect_api

        with prefect_api():
            return covid_benchmark(sources=sources, out=args.out, config=cfg, cluster=args.cluster,
                                   workers=args.workers,
                                   credentials_block=args.credentials_block,
                                   external=list(args.external) or None)


def print_result(result: dict) -> None:
    print(f"dataset version: {result['dataset_version']}  config: {result['config_hash']}")
    print(f"fold results reused from earlier runs: {result['reused']}")
    ext = result.get("external")
    if ext and "error" in ext:
        print(f"external test set FAILED: {ext['error']}")
    elif ext:
        print(f"external test set: {ext['dataset']['version']} {ext['dataset']['counts']}, "
              f"{ext['dropped_in_cv']} images dropped as also in the CV data, "
              f"{ext['dropped_copies']} as copies of CV images")
    for model, why in result["failures"].items():
        print(f"FAILED {model}: {why}")
    print(storage.read_text(result["leaderboard"]["md"]))
    board = result["leaderboard"]
    print("leaderboard: " + ", ".join(board[ext] for ext in ("csv", "md", "png")))
    print(f"training curves and Grad-CAM panels: {result['results']}/<model>/curves.png, "
          "gradcam.png")
    print(f"report: {board['html']}")


def failed(result: dict) -> bool:
    """A model failed, or the external test set asked for could not be made."""
    return bool(result["failures"]) or "error" in (result.get("external") or {})


def cmd_run(args: argparse.Namespace) -> int:
    cli.require_sources(args)
    cfg = resolve_run(args, args.source, args.preset or "paper")
    result = run_benchmark(args, args.source, cfg)
    print_result(result)
    return 1 if failed(result) else 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.weights is None:
        args.weights = "none"
        if not args.quiet:
            print("weights: none (random backbones; pass --weights imagenet to use cached "
                  "ones)")
    cfg = resolve_run(args, [], args.preset or "demo")
    data = make_synthetic(layout.synthetic_data(args.out), covid_patients=12,
                          normals=24, size=192, seed=0)
    if not args.quiet:
        print(f"synthetic data: {data.root} ({data.covid_images} COVID-19 images of "
              f"{data.covid_patients} patients, {data.normal_images} normal DICOMs)")
    result = run_benchmark(args, [f"ieee8023={data.ieee8023}", f"rsna={data.rsna}"], cfg)
    print_result(result)
    return 1 if failed(result) else 0


def add_flow_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the benchmark flow (Prefect + Dask)")
    add_run_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="synthetic data + the smoke preset, no network, no GPU")
    add_run_options(p, out_default="covid-pipeline-demo")
    p.set_defaults(func=cmd_demo)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main(argv, extend=add_flow_commands)


if __name__ == "__main__":
    sys.exit(main())
