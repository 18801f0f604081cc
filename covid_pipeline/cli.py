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
    from covid_pipeline.manifest import ManifestError
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
    p.add_argument("--views", default=None,
                   help="ieee8023 views to keep, comma-separated (default: frontal views)")
    p.add_argument("--no-finding-as-normal", action="store_true",
                   help="ieee8023 rows with finding 'No Finding' become normals")


def source_options(args: argparse.Namespace) -> dict[str, dict]:
    ieee: dict = {}
    if args.views:
        ieee["views"] = [v.strip() for v in args.views.split(",") if v.strip()]
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

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
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
