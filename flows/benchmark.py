"""The benchmark flow: data path → models × folds on Dask → leaderboard.

``covid-benchmark`` runs the data path in its own process, then a ``train-models`` subflow
whose task runner is a DaskTaskRunner built from the ``cluster`` parameter (so a deployment
chooses its cluster by parameter), then aggregation.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import dask
from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import FlowRunContext
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.settings import temporary_settings
from prefect.states import Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from covid_pipeline import cluster as clusters
from covid_pipeline import control as controls
from covid_pipeline import tracking, weights, zoo
from covid_pipeline.baseline import NAME as BASELINE
from covid_pipeline.config import BenchmarkConfig, load_preset, resolve_config, with_overrides
from covid_pipeline.errors import ConfigError
from covid_pipeline.features import needed_views
from covid_pipeline.leaderboard import LeaderboardContext
from covid_pipeline.sources import parse_source
from covid_pipeline.tfsetup import precision_for
from covid_pipeline.training import (
    failed_fold,
    folds_label,
    head_tasks,
    results_root,
    training_jobs,
    write_resolved_config,
)
from flows import credentials, progress
from tasks.data import (
    balance_and_folds,
    confound_report,
    finish_ingest,
    ingest_sources,
    plan_ingest,
    read_chunk,
    write_shards,
)
from tasks.external import external_dataset, train_external_task
from tasks.features import extract_features_task, model_figures_task
from tasks.report import aggregate, log_mlflow
from tasks.training import stored_results_task, train_baseline_task, train_folds_task

MAX_ERROR = 300
PANEL_PRIORITY = 1  # a panel before the heads (priority 0) queued on its worker


def one_line(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= MAX_ERROR else text[: MAX_ERROR - 1] + "…"


def expected_cost(model: str, cfg: BenchmarkConfig, n_images: int,
                  control: bool = False) -> float:
    """Backbone GMACs a model's GPU work needs (what Dask priorities are made from)."""
    gmacs = zoo.gmacs_at(zoo.get(model), cfg.input_size)
    if control:
        return gmacs * n_images * (cfg.effective_control_views + 1)
    if cfg.mode == "cached":
        return gmacs * n_images * (needed_views(cfg) + 1)
    return gmacs * n_images * (cfg.epochs * (cfg.folds - 1) / cfg.folds + 1 / cfg.folds)


def reused_only(records: list[dict], gradcam: dict) -> dict:
    """``train_models``' result when every fold result is stored: no cluster is started."""
    return {"gradcam": {"panels": gradcam, "failures": {}},
            "records": [r for r in records if not r.get("control")], "failures": {},
            "reused": sum(1 for r in records if not r.get("control")),
            "extraction": [],
            "control": {"records": [r for r in records if r.get("control")], "failures": {},
                        "extraction": []},
            "external": {"records": [], "failures": {}}, "wall_seconds": 0.0}


@flow(name="train-models", log_prints=True)
def train_models(dataset_uri: str, config: dict, out: str, n_images: int, n_workers: int = 1,
                 gpu: bool = False, external_uri: str | None = None) -> dict:
    """Fan out the GPU work (per model in ``cached`` mode, per fold in ``online``) and the
    head training (per model and repeat on cached features, per fold online), and the
    border-only control's (per controlled model one extraction, then one task for its
    folds of repeat 0); a failing model yields an error
    entry, not a failure. Repeats reuse the model's features: no backbone pass of their own.
    With ``external_uri``, each model's head is also trained once on all CV images (cached
    features, extracted in either mode) and predicts that external set."""
    logger = get_run_logger()
    cfg = BenchmarkConfig.from_dict(config)
    controlled = cfg.controlled_models
    logger.info(controls.cost_line(cfg, n_images))
    jobs = training_jobs(cfg)
    progress_artifact = create_progress_artifact(
        progress=0.0, key="training-progress",
        description=f"{len(jobs)} (model, repeat, fold) heads, border-only control included")

    def gpu_work() -> contextlib.AbstractContextManager:  # a fresh one each time: a
        # generator context manager can be entered only once
        return dask.annotate(resources={"GPU": 1}) if gpu else contextlib.nullcontext()

    # Dask priority = expected GMACs (a float: higher runs first, small data sets keep order)
    costs = {m: expected_cost(m, cfg, n_images) for m in cfg.models}
    homes = clusters.home_workers(costs, dask_workers(), gpu)

    def at_home(model: str) -> contextlib.AbstractContextManager:
        """The model's backbone work on its home worker, which keeps the built backbone
        (loosely: Dask may still give it to another worker, e.g. when that one is gone or
        idle and stealing)."""
        if model not in homes:
            return contextlib.nullcontext()
        return dask.annotate(workers=[homes[model]], allow_other_workers=True)

    t0 = time.perf_counter()
    extract: dict[tuple[str, bool], Any] = {}
    cached = cfg.mode == "cached" or external_uri is not None
    for model, control in sorted({(m, False) for m in cfg.models if cached}
                                 | {(m, True) for m in controlled},
                                 key=lambda mc: (mc[1], -costs[mc[0]])):
        name = f"extract-{model}-control" if control else f"extract-{model}"
        # a control at its model's priority: right after the model's own extraction on the
        # same worker, while that worker still keeps the backbone
        cost = costs[model] if cached else expected_cost(model, cfg, n_images, control)
        with gpu_work(), at_home(model), dask.annotate(priority=cost):
            extract[model, control] = extract_features_task.with_options(
                task_run_name=name).submit(dataset_uri, model, config, out, control=control)
    external: dict[Any, str] = {}
    if external_uri:
        for model in cfg.models:
            with gpu_work(), at_home(model):
                test_features = extract_features_task.with_options(
                    task_run_name=f"extract-{model}-external").submit(
                    external_uri, model, config, out, views=0)
            external[train_external_task.submit(
                dataset_uri, external_uri, model, config, out, extract[model, False],
                test_features)] = model
    futures = {}
    for model, repeat, folds, control in head_tasks(cfg):
        # train-VGG16-r0-folds-0-4, train-VGG16-control-folds-0-4, train-VGG16-r0-fold-2
        part = folds_label(folds).replace(" ", "-")
        name = f"train-{model}-{'control' if control else f'r{repeat}'}-{part}"
        train = train_folds_task.with_options(task_run_name=name)
        if control or cfg.mode == "cached":
            # the extraction's result says which features (root, precision, weights) to read
            fut = train.submit(dataset_uri, model, folds, config, out,
                               features=extract[model, control], repeat=repeat,
                               control=control)
        else:
            with gpu_work(), dask.annotate(priority=costs[model]):
                fut = train.submit(dataset_uri, model, folds, config, out)
        futures[fut] = (model, repeat, folds, control)
    # each model's figures (Grad-CAM panel, curves) as soon as its repeat-0 heads are
    # stored, on workers while other models train, before heads still waiting on its home
    # worker (which the panel needs: the heads can go anywhere); without panels the
    # aggregation draws the curves
    panel_futures = {}
    for model in cfg.models if cfg.gradcam_images else ():
        with gpu_work(), at_home(model), dask.annotate(priority=PANEL_PRIORITY):
            panel_futures[model] = model_figures_task.submit(
                dataset_uri, model, config, out, fold_records=[
                    f for f, (m, repeat, _, control) in futures.items()
                    if m == model and repeat == 0 and not control])
    records: list[dict] = []
    control_records: list[dict] = []
    failures: dict[str, str] = {}
    control_failures: dict[str, str] = {}
    # the terminal's progress also counts the extractions and figures (nothing else reads
    # them here: the heads' and the panels' own collection below does)
    others = {f: f"extract-{m}{'-control' if c else ''}" for (m, c), f in extract.items()}
    others.update({f: f"figures-{m}" for m, f in panel_futures.items()})
    progress.planned(len(futures) + len(others))
    done = 0
    for fut in as_completed([*futures, *others]):
        if fut in others:
            progress.finished(others[fut], fut.state.is_completed())
            continue
        model, repeat, folds, control = futures[fut]
        done += len(folds)
        where = folds_label(folds, repeat)
        try:
            (control_records if control else records).extend(fut.result())
            progress.finished(f"{model} {'control ' if control else ''}{where}")
        except Exception as exc:  # noqa: BLE001 - a failed model must not fail the flow
            # the folds trained before the failing one still count on the model's row
            (control_records if control else records).extend(getattr(exc, "fold_records", []))
            where = failed_fold(exc) or where
            progress.finished(f"{model} {'control ' if control else ''}{where}", ok=False)
            needs = control or cfg.mode == "cached"  # online folds need no extraction
            cause = (extract_error(extract.get((model, control))) if needs else None) or (
                one_line(exc))
            (control_failures if control else failures).setdefault(model, f"{where}: {cause}")
            logger.error("model %s %s%s failed: %s", model,
                         "border-only control " if control else "", where, cause)
        update_progress_artifact(progress_artifact, progress=100.0 * done / len(jobs))
    external_records, external_failures = [], {}
    for fut, model in external.items():
        try:
            external_records.append(fut.result())
        except Exception as exc:  # noqa: BLE001 - the CV results stand without it
            external_failures[model] = extract_error(extract.get((model, False))) or one_line(
                exc)
            logger.error("model %s external test failed: %s", model, external_failures[model])
    panels, panel_failures = gradcam_panels(panel_futures, failures)
    wall = time.perf_counter() - t0
    extraction = {key: f.result() for key, f in extract.items() if f.state.is_completed()}
    reused = sum(1 for r in records if r.get("reused"))
    log_makespan(logger, list(extraction.values()), records + control_records, wall,
                 n_workers)
    logger.info("%d fold results, %d reused from earlier runs, %d failed models; border-only "
                "control: %d fold results, %d reused, %d failed models", len(records), reused,
                len(failures), len(control_records),
                sum(1 for r in control_records if r.get("reused")), len(control_failures))
    return {"records": records, "failures": failures, "reused": reused,
            "extraction": [e for (_, c), e in extraction.items() if not c],
            "control": {"records": control_records, "failures": control_failures,
                        "extraction": [e for (_, c), e in extraction.items() if c]},
            "external": {"records": external_records, "failures": external_failures},
            "gradcam": {"panels": panels, "failures": panel_failures},
            "wall_seconds": wall}


def dask_workers() -> dict[str, dict[str, Any]]:
    """The workers of this flow run's Dask cluster (address → info), or none for a thread
    pool runner."""
    runner = FlowRunContext.get().task_runner
    if not isinstance(runner, DaskTaskRunner):
        return {}
    return runner.client.scheduler_info(n_workers=-1)["workers"]


def gradcam_panels(futures: dict[str, Any], failures: dict[str, str]) -> tuple[dict, dict]:
    """Each trained model's Grad-CAM panel from its figures task (those of failed models
    did not run); a failed one is logged and the leaderboard goes on without its column's
    value (the aggregation draws the curves it lacks)."""
    logger = get_run_logger()
    panels, panel_failures = {}, {}
    for model, fut in futures.items():
        if model in failures:
            continue
        try:
            panels[model] = fut.result()
        except Exception as exc:  # noqa: BLE001 - the board stands without it
            panel_failures[model] = one_line(exc)
            logger.error("model %s Grad-CAM panel failed: %s", model, panel_failures[model])
    return panels, panel_failures


def extract_error(fut: Any) -> str | None:
    """The extraction task's error, when that is why a head-training task did not run."""
    if fut is None or not fut.state.is_failed():
        return None
    try:
        fut.result()
    except Exception as exc:  # noqa: BLE001
        return f"feature extraction: {one_line(exc)}"
    return None


def log_makespan(logger, extraction: list[dict], records: list[dict], wall: float,
                 workers: int) -> None:
    """The makespan lower bound: max of total work / workers and the longest piece of work
    (an extraction or one fold's head; a head-training task trains several in turn)."""
    work = [e["seconds"] for e in extraction] + [
        r["timing"]["wall_seconds"] for r in records if not r.get("reused")]
    if not work:
        return
    workers = max(1, workers)
    bound = max(sum(work) / workers, max(work))
    logger.info("wall %.1fs; makespan lower bound %.1fs (%d extractions and heads, %d "
                "workers)", wall, bound, len(work), workers)


def own_process_subflow() -> contextlib.AbstractContextManager:
    """Settings for a subflow run in this flow's process: no heartbeats of its own (the
    parent's say whether the process lives, and a crash marks the parent), as Prefect
    joins a flow's heartbeat thread on exit, which sleeps in 1 s steps: up to a second at
    the end of every subflow."""
    return temporary_settings(updates={"flows.heartbeat_frequency": None})


@flow(name="ingest-on-cluster", log_prints=True)
def ingest_on_cluster(plan_uri: str, out: str, settings: dict, chunks: int) -> int:
    """Read a staged ingest plan's chunks as tasks on the Dask cluster; return the files
    read (chunks staged by an interrupted run are not read again)."""
    futures = read_chunk.map(unmapped(plan_uri), list(range(chunks)), unmapped(out),
                             unmapped(settings))
    return sum(f.result() for f in futures)


def ingest(specs: list, out: str, cfg: BenchmarkConfig, cluster: str, workers: int | None,
           spec: clusters.ClusterSpec) -> str:
    """Plan the ingest; read in this process, or on the Dask cluster in chunks when there
    are at least ``cfg.cluster_ingest_files`` files to read; return the staged manifest."""
    logger = get_run_logger()
    data = cfg.data.as_dict()
    planned = plan_ingest([str(s) for s in specs], out, data)
    if spec.threads or planned["files"] < cfg.cluster_ingest_files:
        return ingest_sources(planned["uri"], out, data)
    logger.info("ingest: %d files to read, in %d chunks on the Dask cluster",
                planned["files"], planned["chunks"])
    ingest_spec = clusters.resolve(cluster, planned["chunks"], workers)
    with own_process_subflow():
        ingest_on_cluster.with_options(
            task_runner=DaskTaskRunner(**ingest_spec.runner_kwargs()))(
            planned["uri"], out, data, planned["chunks"])
    return finish_ingest(planned["uri"], out, data, planned["chunks"])


PAPER = load_preset("paper")
def legacy_config(config: BenchmarkConfig, preset: str | None, config_file: str | None,
                  weights_source: str | None) -> BenchmarkConfig:
    """The config of a deployment registered before ``config`` existed: it passes
    ``preset`` (and maybe ``config_file``, ``weights_source``) instead, which win."""
    if preset or config_file:
        return resolve_config(preset or "paper", config_file, weights=weights_source)
    return with_overrides(config, weights=weights_source)


@flow(name="covid-benchmark", log_prints=True)
def covid_benchmark(
    sources: list[str],
    out: str,
    config: BenchmarkConfig = PAPER,
    cluster: str = "local",
    workers: int | None = None,
    triggered_by: str | None = None,
    credentials_block: str | None = None,
    preset: str | None = None,
    config_file: str | None = None,
    weights_source: str | None = None,
    external: list[str] | None = None,
) -> dict[str, Any] | State:
    """Run the benchmark on ``sources`` and write the leaderboard under ``out``.

    Args:
        sources: data sets as KIND=URI (ieee8023, rsna or folder; local paths or s3://).
        out: output folder or s3:// URI (datasets, features, results, leaderboards).
        config: the whole benchmark configuration (default: the paper preset); the
            data-path settings are its `data`.
        cluster: local, cuda, threads, or a Dask scheduler address (tcp://host:8786).
        workers: worker processes of a local cluster (default: one per core, at most one
            per task).
        triggered_by: the id of the event that started this run, if any.
        credentials_block: a Prefect block with object-storage credentials, secret/NAME.
        preset: only for deployments made before `config` existed: a preset that replaces
            `config` (leave empty).
        config_file: the same, a config YAML on the flow's machine (leave empty).
        weights_source: the same, the weights setting over either (leave empty).
        external: external test sets as KIND=URI, ingested into a dataset version of their
            own (never balanced or folded; images also in the CV data dropped); each model's
            head, trained once on all CV images, predicts them.
    """
    logger = get_run_logger()
    if triggered_by:
        logger.info("triggered by event %s", triggered_by)
    cfg = config
    if preset or config_file or weights_source:
        cfg = legacy_config(config, preset, config_file, weights_source)
        logger.warning("this deployment passes preset/config_file/weights_source, the "
                       "parameters of covid-benchmark before `config`; re-create it with "
                       "`python -m deployments.deploy` to pass `config` instead")
    try:  # first: missing weights fail the run with their one line, not a traceback
        weights.preflight(cfg)
    except ConfigError as exc:
        logger.error("%s", exc)
        return Failed(message=str(exc))
    logger.info("config %s (%s): models %s; %d folds, %d epochs, mode %s, weights %s",
                cfg.config_hash(), cfg.name, ", ".join(cfg.models), cfg.folds, cfg.epochs,
                cfg.mode, cfg.weights)
    specs = [parse_source(s) for s in sources]  # validate before any work
    external_specs = [parse_source(s) for s in external or []]
    settings = cfg.data
    spec = clusters.resolve(cluster, len(cfg.models) * cfg.folds, workers)
    n_workers, n_gpus = clusters.size(spec)  # an existing cluster is checked before any work
    if credentials_block:  # before the local cluster starts: its workers inherit them
        names = credentials.apply_block(credentials_block)
        logger.info("storage credentials from block %s (%s)", credentials_block,
                    ", ".join(names))

    data = settings.as_dict()
    progress.stage("ingest")
    staged = ingest(specs, out, cfg, cluster, workers, spec)
    progress.stage("balance, folds, shards")
    staged = balance_and_folds(staged, out, data)
    shards = write_shards(staged, out, data)
    dataset = shards["dataset"]
    logger.info("dataset %s: %s", dataset["version"], dataset["counts"])
    warnings = confound_report(dataset["uri"], dataset["version"])
    for text in warnings:
        logger.warning("confound: %s", text)

    ext, ext_error = None, None
    if external_specs:
        try:
            ext = external_dataset([str(s) for s in external_specs], out, data,
                                   dataset["uri"])
        except Exception as exc:  # noqa: BLE001 - the cross-validation stands without it
            ext_error = one_line(exc)
            logger.error("external test set failed: %s", ext_error)
    if ext:
        logger.info("external set %s: %s; %d images dropped as also in the CV data, %d as "
                    "copies of CV images", ext["dataset"]["version"], ext["dataset"]["counts"],
                    ext["dropped_in_cv"], ext["dropped_copies"])

    write_resolved_config(out, dataset["version"], cfg)
    runner = (ThreadPoolTaskRunner(max_workers=1) if spec.threads
              else DaskTaskRunner(**spec.runner_kwargs()))
    n_images = sum(dataset["counts"].values())
    # when every fold result is stored already, a cluster this flow would start is not
    # started, and a standing one runs no task (its workers, which alone know their
    # precision and weights files, are asked)
    stored = None if ext else stored_results_task(
        dataset["uri"], cfg.as_dict(), out, None if spec.address else precision_for(n_gpus),
        training_jobs(cfg), address=spec.address)
    # the acquisition-only baseline on the same folds (seconds, in this process), beside
    # the training
    baseline_future = train_baseline_task.submit(dataset["uri"], cfg.as_dict(), out)
    progress.stage("training")
    if stored is not None:
        logger.info("all %d fold results are stored for this dataset version and config; "
                    "no training, %s", len(stored["records"]),
                    "no task on the cluster" if spec.address else "no cluster started")
        trained = reused_only(stored["records"], stored["gradcam"])
    else:
        with own_process_subflow():
            trained = train_models.with_options(task_runner=runner)(
                dataset["uri"], cfg.as_dict(), out, n_images, n_workers, n_gpus > 0,
                ext["dataset"]["uri"] if ext else None)

    progress.stage("baseline, leaderboard, report")
    # the baseline is ranked with the models; its failure leaves a row saying why, like a
    # model's
    failures = dict(trained["failures"])
    try:
        baseline = baseline_future.result()
    except Exception as exc:  # noqa: BLE001 - the models' board must still be written
        baseline = []
        failures[BASELINE] = one_line(exc)
        logger.error("%s failed: %s", BASELINE, failures[BASELINE])
    context = LeaderboardContext(
        dataset_version=dataset["version"], group_by=cfg.group_by,
        class_counts=dataset["counts"], config_hash=cfg.config_hash(), preset=cfg.name,
        n_folds=cfg.folds, repeats=cfg.repeats,
        input_sizes={m: cfg.input_size or zoo.get(m).input_size for m in cfg.models},
        dataset_uri=dataset["uri"], bootstrap_resamples=cfg.bootstrap_resamples,
        alpha=cfg.alpha, seed=cfg.seed, warnings=tuple(warnings),
        control_box=cfg.control_box if cfg.controlled_models else None,
        external=({"version": ext["dataset"]["version"], "counts": ext["dataset"]["counts"],
                   "dropped_in_cv": ext["dropped_in_cv"],
                   "dropped_copies": ext["dropped_copies"]} if ext else
                  {"error": ext_error} if ext_error else None),
    )
    folders = [results_root(out, dataset["version"], cfg), out]
    board = aggregate(trained["records"] + baseline, failures,
                      [*cfg.models, BASELINE], context.__dict__, folders,
                      control={k: trained["control"][k] for k in ("records", "failures")},
                      external=trained["external"] if ext else None,
                      gradcam={m: p["outside_share"]
                               for m, p in trained["gradcam"]["panels"].items()})
    uri = tracking.tracking_uri(cfg)
    if uri:
        try:
            runs = log_mlflow(uri, cfg.as_dict(), board["rows"],
                              trained["records"] + baseline + trained["control"]["records"],
                              folders[0], dataset["version"], str(flow_run.id))
            logger.info("MLflow %s: %d model runs logged", uri, len(runs))
        except Exception as exc:  # noqa: BLE001 - the benchmark stands without tracking
            logger.warning("MLflow tracking at %s failed: %s", uri, one_line(exc))
    return {
        "flow_run_id": str(flow_run.id),
        "dataset_version": dataset["version"],
        "config_hash": cfg.config_hash(),
        "leaderboard": board["uris"],
        "rows": board["rows"],
        "reused": trained["reused"],
        "failures": failures,
        "extraction": trained["extraction"],
        "control": {"failures": trained["control"]["failures"],
                    "extraction": trained["control"]["extraction"],
                    "reused": sum(1 for r in trained["control"]["records"] if r.get("reused"))},
        "external": ({**ext, "failures": trained["external"]["failures"]} if ext else
                     {"error": ext_error} if ext_error else None),
        "results": folders[0],
    }
