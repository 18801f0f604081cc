"""The ``covid-pipeline`` command line.

Heavy imports (TensorFlow, Prefect) happen inside the commands that need them, so that
``--help``, ``models`` and bad-input errors answer at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence


def _user_errors() -> tuple[type[BaseException], ...]:
    from covid_pipeline.errors import ManifestError
    from covid_pipeline.storage import StorageError

    return (ManifestError, StorageError, FileNotFoundError, PermissionError)


def add_data_options(p: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """The data-path options shared by ``ingest`` and ``run``."""
    p.add_argument("--source", action="append", default=[], metavar="KIND=URI",
                   help="a data set: ieee8023=URI, rsna=URI or folder=URI (repeatable)")
    p.add_argument("--balance", choices=["undersample", "none", "class-weight"],
                   default="undersample" if defaults else None)
    p.add_argument("--folds", type=int, default=5 if defaults else None)
    p.add_argument("--group-by", choices=["patient", "none"],
                   default="patient" if defaults else None)
    p.add_argument("--seed", type=int, default=42 if defaults else None)
    p.add_argument("--image-size", type=int, default=512 if defaults else None,
                   help="canonical resolution of the normalised images (px)")
    p.add_argument("--view-filter", default=None,
                   help="ieee8023 views to keep, comma-separated (default: frontal views)")
    p.add_argument("--no-finding-as-normal", action="store_true",
                   help="ieee8023 rows with finding 'No Finding' become normals")


def source_options(args: argparse.Namespace) -> dict[str, dict]:
    ieee: dict = {}
    if args.view_filter:
        ieee["views"] = [v.strip() for v in args.view_filter.split(",") if v.strip()]
    if args.no_finding_as_normal:
        ieee["no_finding_as_normal"] = True
    return {"ieee8023": ieee} if ieee else {}


def cmd_ingest(args: argparse.Namespace) -> int:
    from covid_pipeline.dataset import DataSettings, prepare
    from covid_pipeline.sources import parse_source

    specs = [parse_source(s) for s in args.source]
    settings = DataSettings(balance=args.balance, folds=args.folds, group_by=args.group_by,
                            seed=args.seed, image_size=args.image_size,
                            source_options=source_options(args))
    settings.validate()
    info, report = prepare(specs, args.out, settings)
    print(f"dataset version: {info.version}")
    print(f"dataset uri: {info.uri}")
    print(format_report(report))
    return 0


def format_report(report: dict) -> str:
    lines = ["ingested (per source, per class):"]
    for source, counts in report["counts"]["ingested"].items():
        lines.append(f"  {source}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for source, reasons in report.get("excluded", {}).items():
        lines.append(f"excluded by filters ({source}): "
                     + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())))
    quarantined = report.get("quarantined") or {}
    lines.append("quarantined: " + (", ".join(f"{k} {v}" for k, v in sorted(quarantined.items()))
                                    or "none"))
    bal = report["balance"]
    lines.append(f"balance ({bal['strategy']}): kept "
                 + ", ".join(f"{k} {v}" for k, v in sorted(bal["kept"].items()))
                 + "; dropped "
                 + ", ".join(f"{k} {v}" for k, v in sorted(bal["dropped"].items())))
    return "\n".join(lines)


def cmd_synth_data(args: argparse.Namespace) -> int:
    from covid_pipeline.synth import make_synthetic

    s = make_synthetic(args.out, covid_patients=args.patients, normals=args.normals,
                       size=args.size, seed=args.seed)
    print(f"synthetic data written to {s.root}")
    print(f"  --source ieee8023={s.ieee8023}  ({s.covid_images} COVID-19 images, "
          f"{s.covid_patients} patients)")
    print(f"  --source rsna={s.rsna}  ({s.normal_images} normal DICOM images)")
    return 0


def add_run_options(p: argparse.ArgumentParser, out_default: str | None = None) -> None:
    p.add_argument("--preset", default=None, help="a preset name (see `models --presets`)")
    p.add_argument("--config", default=None, help="a YAML config file (keys as in presets)")
    p.add_argument("--models", default=None, help="comma-separated model names")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--mode", choices=["online", "cached"], default=None,
                   help="online: the study's procedure; cached: backbone features per view")
    p.add_argument("--views", type=int, default=None, dest="feature_views",
                   help="cached mode: augmented views per image (default: = epochs)")
    p.add_argument("--input-size", type=int, default=None,
                   help="run every model at this input size (default: the table's)")
    p.add_argument("--weights", default=None, help="imagenet (default), none, or a folder/file")
    p.add_argument("--cluster", default="local",
                   help="local, cuda, or a Dask scheduler address (tcp://host:8786)")
    p.add_argument("--workers", type=int, default=None, help="local cluster: worker processes")
    p.add_argument("--out", required=out_default is None, default=out_default,
                   help="output folder or s3:// URI")
    p.add_argument("--credentials-block", default=None, metavar="secret/NAME",
                   help="object-storage credentials from a Prefect block: secret/NAME "
                        "(default: the environment)")


def run_overrides(args: argparse.Namespace) -> dict:
    models = [m.strip() for m in args.models.split(",")] if args.models else None
    return dict(models=models, folds=args.folds, epochs=args.epochs, weights=args.weights,
                balance=args.balance, group_by=args.group_by, seed=args.seed, mode=args.mode,
                views=args.feature_views, image_size=args.image_size, input_size=args.input_size)


def check_run(args: argparse.Namespace, sources: list[str], preset: str) -> None:
    """Validate every parameter (cheaply, before Prefect starts)."""
    from covid_pipeline.cluster import check
    from covid_pipeline.config import resolve_config
    from covid_pipeline.sources import parse_source

    resolve_config(preset=preset, config_file=args.config, **run_overrides(args))
    for s in sources:
        parse_source(s)
    check(args.cluster)
    if args.credentials_block:
        from flows.credentials import check_block_name

        check_block_name(args.credentials_block)


def run_benchmark(args: argparse.Namespace, sources: list[str], preset: str) -> dict:
    """Validate everything cheap first, then start Prefect and run the flow."""
    check_run(args, sources, preset)
    models = run_overrides(args)["models"]
    from flows.benchmark import covid_benchmark
    from flows.runtime import prefect_api

    with prefect_api():
        return covid_benchmark(
            sources=sources, out=args.out, preset=preset, config_file=args.config,
            models=models, folds=args.folds, epochs=args.epochs, weights_source=args.weights,
            balance=args.balance, group_by=args.group_by, seed=args.seed, mode=args.mode,
            views=args.feature_views, image_size=args.image_size, input_size=args.input_size,
            cluster=args.cluster, workers=args.workers,
            source_options=source_options(args), credentials_block=args.credentials_block,
        )


def print_result(result: dict) -> None:
    from covid_pipeline import storage

    print(f"dataset version: {result['dataset_version']}  config: {result['config_hash']}")
    print(f"fold results reused from earlier runs: {result['reused']}")
    for model, why in result["failures"].items():
        print(f"FAILED {model}: {why}")
    print(storage.read_text(result["leaderboard"]["md"]))
    print("leaderboard: " + ", ".join(result["leaderboard"].values()))


def cmd_run(args: argparse.Namespace) -> int:
    if not args.source:
        from covid_pipeline.errors import ManifestError

        raise ManifestError("no --source given; add e.g. --source ieee8023=/data/covid")
    result = run_benchmark(args, args.source, args.preset or "paper")
    print_result(result)
    return 1 if result["failures"] else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from covid_pipeline import storage
    from covid_pipeline.synth import make_synthetic

    check_run(args, [], args.preset or "smoke")
    data = make_synthetic(storage.join(args.out, "synthetic-data"), covid_patients=12,
                          normals=24, size=192, seed=0)
    print(f"synthetic data: {data.root} ({data.covid_images} COVID-19 images of "
          f"{data.covid_patients} patients, {data.normal_images} normal DICOMs)")
    if args.weights is None:
        args.weights = "none"
        print("weights: none (random backbones; pass --weights imagenet to use cached ones)")
    result = run_benchmark(args, [f"ieee8023={data.ieee8023}", f"rsna={data.rsna}"],
                           args.preset or "smoke")
    print_result(result)
    return 1 if result["failures"] else 0


def cmd_models(args: argparse.Namespace) -> int:
    from covid_pipeline import zoo
    from covid_pipeline.config import load_preset, preset_names

    if args.presets:
        for name in preset_names():
            cfg = load_preset(name)
            print(f"{name}: {len(cfg.models)} models, {cfg.folds} folds, {cfg.epochs} epochs")
        return 0
    names = set(load_preset(args.preset).models) if args.preset else None
    print(f"{'model':<20} {'family':<14} {'input':>5} {'GMACs':>7} {'paper':>5}  constructor")
    for spec in zoo.all_models():
        if names is None or spec.name in names:
            print(f"{spec.name:<20} {spec.family:<14} {spec.input_size:>5} {spec.gmacs:>7.2f} "
                  f"{'yes' if spec.paper else '':>5}  {spec.constructor}")
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from covid_pipeline import weights
    from covid_pipeline.config import load_preset

    names = ([m.strip() for m in args.models.split(",")] if args.models
             else list(load_preset(args.preset).models))
    if args.action == "status":
        missing = weights.report(names, args.dir)
        return 1 if missing else 0
    weights.download(names, args.dir)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="covid-pipeline",
        description="COVID-19 vs normal chest X-ray transfer-learning benchmark.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="ingest, balance, fold and shard the data sets")
    add_data_options(p)
    p.add_argument("--out", required=True, help="output folder or s3:// URI")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("synth-data", help="write a synthetic data set in the upstream layouts")
    p.add_argument("out", help="folder or URI to write ieee8023/ and rsna/ into")
    p.add_argument("--patients", type=int, default=12, help="COVID-19 patients (2 images each)")
    p.add_argument("--normals", type=int, default=24, help="normal DICOM images")
    p.add_argument("--size", type=int, default=256, help="approximate image side (px)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth_data)

    p = sub.add_parser("run", help="run the benchmark flow (Prefect + Dask)")
    add_data_options(p, defaults=False)
    add_run_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="synthetic data + the smoke preset, no network, no GPU")
    add_data_options(p, defaults=False)
    add_run_options(p, out_default="covid-pipeline-demo")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("models", help="list the model table")
    p.add_argument("--preset", default=None, help="only the models of this preset")
    p.add_argument("--presets", action="store_true", help="list the presets instead")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("weights", help="check or fetch ImageNet weights for offline use")
    p.add_argument("action", choices=["status", "download"])
    p.add_argument("--preset", default="paper")
    p.add_argument("--models", default=None, help="comma-separated model names")
    p.add_argument("--dir", default=None, help="weights folder (default: the Keras cache)")
    p.set_defaults(func=cmd_weights)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except _user_errors() as exc:
        print(f"covid-pipeline: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("covid-pipeline: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
