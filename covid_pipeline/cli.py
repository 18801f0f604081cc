"""The library's commands of ``covid-pipeline`` (ingest, synth-data, models, weights) and
the pieces the orchestration's commands share (``flows/cli.py`` adds ``run`` and ``demo``
and is the entry point).

Options of settings come from the config model (:mod:`covid_pipeline.config`): names, help,
choices and defaults live there only. Values pass through as text and are validated by the
model, so every bad value is one line. Nothing here imports TensorFlow or Prefect at start:
``--help``, ``models`` and bad-input errors answer at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence

from covid_pipeline import confounds, export, predict, weights, zoo
from covid_pipeline.config import (
    DATA_FIELDS,
    DataSettings,
    choices_of,
    cli_fields,
    field_info,
    flag_of,
    load_preset,
    preset_names,
)
from covid_pipeline.dataset import prepare
from covid_pipeline.errors import ConfigError, PipelineError
from covid_pipeline.sources import parse_source
from covid_pipeline.synth import make_synthetic


def add_config_options(p: argparse.ArgumentParser, keys: Iterable[str]) -> None:
    """One option per config field that has a flag; unset options stay None (the preset's
    or the model's default applies)."""
    for key in keys:
        info = field_info(key)
        choices = choices_of(key)
        default = info.get_default(call_default_factory=True)
        if isinstance(default, tuple):
            default = ",".join(default) if len(default) < 4 else f"{len(default)} models"
        help_text = info.description or ""
        if choices:
            help_text += f"; one of {', '.join(choices)}"
        p.add_argument(flag_of(key), dest=key, default=None,
                       metavar="{" + ",".join(choices) + "}" if choices else key.upper(),
                       help=f"{help_text} (default: the preset's, else {default})")


def add_data_options(p: argparse.ArgumentParser) -> None:
    """The data-path options shared by ``ingest``, ``run`` and ``demo``."""
    p.add_argument("--source", action="append", default=[], metavar="KIND=URI",
                   help="a data set: ieee8023=URI, rsna=URI or folder=URI (repeatable)")
    add_config_options(p, [k for k in DATA_FIELDS if flag_of(k)])
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


def config_overrides(args: argparse.Namespace) -> dict:
    """The settings the command line gives (flat keys; None where not given)."""
    overrides = {key: getattr(args, key, None) for key in cli_fields()}
    options = source_options(args)
    if options:
        overrides["source_options"] = options
    return overrides


def require_sources(args: argparse.Namespace) -> None:
    if not args.source:
        raise ConfigError("no --source given; add e.g. --source ieee8023=/data/covid")


def cmd_ingest(args: argparse.Namespace) -> int:
    require_sources(args)
    specs = [parse_source(s) for s in args.source]
    given = {k: v for k, v in config_overrides(args).items() if k in DATA_FIELDS and v is not None}
    info, report = prepare(specs, args.out, DataSettings(**given))
    print(f"dataset version: {info.version}")
    print(f"dataset uri: {info.uri}")
    print(format_report(report))
    for warning in confounds.write_report(info.uri, info.version)["warnings"]:
        print(f"confound: {warning}")
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
    dups = report.get("near_duplicates")
    if dups:
        lines.append(f"near-duplicate groups (copies of one radiograph across patients, kept in "
                     f"one fold each): {dups['groups']} ({dups['images']} images)")
    bal = report["balance"]
    lines.append(f"balance ({bal['strategy']}): kept "
                 + ", ".join(f"{k} {v}" for k, v in sorted(bal["kept"].items()))
                 + "; dropped "
                 + ", ".join(f"{k} {v}" for k, v in sorted(bal["dropped"].items())))
    return "\n".join(lines)


def cmd_synth_data(args: argparse.Namespace) -> int:
    s = make_synthetic(args.out, covid_patients=args.patients, normals=args.normals,
                       size=args.size, seed=args.seed)
    print(f"synthetic data written to {s.root}")
    print(f"  --source ieee8023={s.ieee8023}  ({s.covid_images} COVID-19 images, "
          f"{s.covid_patients} patients)")
    print(f"  --source rsna={s.rsna}  ({s.normal_images} normal DICOM images)")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
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
    names = ([m.strip() for m in args.models.split(",")] if args.models
             else list(load_preset(args.preset).models))
    if args.action == "status":
        missing = weights.report(names, args.dir)
        return 1 if missing else 0
    weights.download(names, args.dir)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    card = export.export(args.results, args.model, args.out)
    def metric(name: str) -> str:
        values = card["cv"]["metrics"][name]
        value = values["pooled"] if values["pooled"] is not None else values["mean"]
        return "–" if value is None else f"{value:.3f}"

    print(f"{args.out}: {card['model']} on dataset {card['dataset_version']} (head trained "
          f"on {card['training']['n_train_images']} images); CV AUC {metric('auc')}, "
          f"balanced accuracy {metric('balanced_accuracy')}")
    print(f"model card: {args.out[: -len('.keras')]}.card.md (research use only)")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    results, _ = predict.predict(args.model_file, args.inputs, args.gradcam)
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        for r in results:
            print(r.line())
    return 1 if any(r.error for r in results) else 0


def build_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """The parser with the library's commands; the orchestration adds its own to ``sub``."""
    parser = argparse.ArgumentParser(
        prog="covid-pipeline",
        description="COVID-19 vs normal chest X-ray transfer-learning benchmark.",
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and the traceback of any error")
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

    p = sub.add_parser("export", help="train a model's head on every image and save one "
                                      "Keras file + model card")
    p.add_argument("--results", required=True,
                   help="a results folder: <out>/results/<dataset version>/<config hash>")
    p.add_argument("--model", required=True, help="a model of that leaderboard")
    p.add_argument("--out", required=True, help="the .keras file to write (or s3:// URI)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("predict", help="P(COVID-19) of image files with an exported model")
    p.add_argument("model_file", help="a .keras file `export` wrote")
    p.add_argument("inputs", nargs="+", help="image files (PNG, JPEG, DICOM) or folders")
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")
    p.add_argument("--gradcam", default=None, metavar="DIR",
                   help="write each file's Grad-CAM overlay (<name>.gradcam.png) here")
    p.set_defaults(func=cmd_predict)
    return parser, sub


def main(argv: Sequence[str] | None = None,
         extend: Callable[[argparse._SubParsersAction], None] | None = None) -> int:
    """Parse, run the command; a :class:`PipelineError` is one line and exit 2 (``-v``:
    with its traceback). Anything else is not dressed up: it keeps its traceback."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    parser, sub = build_parser()
    if extend is not None:
        extend(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except PipelineError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"covid-pipeline: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("covid-pipeline: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
