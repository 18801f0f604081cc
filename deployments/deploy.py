"""The project's Prefect deployments, in one table, served or deployed to a work pool.

    python -m deployments.deploy serve  --source ieee8023=s3://… --source rsna=s3://… \\
        --out s3://bucket/covid [--preset paper] [--cluster tcp://dask-scheduler:8786]
    python -m deployments.deploy deploy --pool covid-process …   # for a process worker

``covid-benchmark`` runs on a cron schedule (weekly by default) and whenever the
``dataset-watcher`` (every few minutes) emits ``covid.dataset.updated``; the event's
sources and output replace the defaults, and the event id is passed on for tracing.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covid_pipeline.config import resolve_config
from covid_pipeline.sources import parse_source
from flows.credentials import check_block_name

PROJECT = Path(__file__).resolve().parents[1]
EVENT = "covid.dataset.updated"


@dataclass(frozen=True)
class DeploymentSpec:
    """One row of the deployment table."""

    name: str
    entrypoint: str  # "path/to/file.py:flow_function", relative to the project root
    description: str
    cron: str | None = None
    interval_seconds: int | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    on_event: str | None = None  # run when this event arrives
    event_parameters: dict[str, Any] = field(default_factory=dict)


def table(sources: list[str], out: str, preset: str, cluster: str, weights: str | None,
          cron: str, watch_seconds: int, config_file: str | None = None,
          credentials_block: str | None = None) -> list[DeploymentSpec]:
    """The deployments: the scheduled/triggered benchmark and the data-set watcher.

    The benchmark's ``config`` parameter is the resolved, validated config (``preset`` or
    ``config_file`` as its base, ``weights`` over it): the UI's run form shows its fields.
    """
    access = {"credentials_block": credentials_block} if credentials_block else {}
    cfg = resolve_config(preset, config_file=config_file, weights=weights)
    bench = {"sources": sources, "out": out, "config": cfg.as_dict(), "cluster": cluster,
             **access}
    return [
        DeploymentSpec(
            name="covid-benchmark",
            entrypoint="flows/benchmark.py:covid_benchmark",
            description="The transfer-learning benchmark: data path, models x folds, "
                        "leaderboard.",
            cron=cron,
            parameters=bench,
            on_event=EVENT,
            event_parameters={
                "sources": "{{ event.payload.sources }}",
                "out": "{{ event.payload.out }}",
                "triggered_by": "{{ event.id | string }}",
            },
        ),
        DeploymentSpec(
            name="dataset-watcher",
            entrypoint="flows/watcher.py:dataset_watcher",
            description=f"Fingerprints the sources; emits {EVENT} when one changed.",
            interval_seconds=watch_seconds,
            parameters={"sources": sources, "out": out, **access},
        ),
    ]


def load_flow(entrypoint: str):
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(str(PROJECT / entrypoint))


def trigger_fields(spec: DeploymentSpec) -> dict[str, Any] | None:
    """The fields of the event trigger that runs ``spec`` with the event's parameters (the
    same for ``serve``, ``deploy`` and prefect.yaml), or None."""
    if not spec.on_event:
        return None
    return {"name": f"{spec.name} on {spec.on_event}", "expect": [spec.on_event],
            "match": {"prefect.resource.id": "covid.dataset.*"},
            "parameters": {**spec.parameters, **spec.event_parameters}}


def triggers_for(spec: DeploymentSpec) -> list:
    """The event trigger of ``spec`` as a Prefect object, if it has one."""
    fields = trigger_fields(spec)
    if fields is None:
        return []
    from prefect.events import DeploymentEventTrigger

    return [DeploymentEventTrigger(**{**fields, "expect": set(fields["expect"])})]


def prefect_yaml(specs: list[DeploymentSpec], pool: str, workdir: str) -> str:
    """prefect.yaml for ``prefect deploy --all`` (or ``--name``): the same deployments, for
    a process work pool whose flow runs start in ``workdir`` (a checkout of this project)."""
    import prefect
    import yaml

    def deployment(spec: DeploymentSpec) -> dict[str, Any]:
        schedule = ({"cron": spec.cron} if spec.cron else
                    {"interval": spec.interval_seconds} if spec.interval_seconds else None)
        fields = trigger_fields(spec)
        return {"name": spec.name, "description": spec.description,
                "entrypoint": spec.entrypoint, "tags": ["covid-pipeline"],
                "parameters": spec.parameters, "work_pool": {"name": pool},
                "schedules": [schedule] if schedule else [],
                "triggers": [{"type": "event", "enabled": True, **fields}] if fields else []}

    body = {"name": "covid-pipeline", "prefect-version": prefect.__version__,
            "build": None, "push": None,
            "pull": [{"prefect.deployments.steps.set_working_directory": {
                "directory": workdir}}],
            "deployments": [deployment(spec) for spec in specs]}
    class Dumper(yaml.SafeDumper):  # every value written out, no &anchors / *aliases
        def ignore_aliases(self, data: Any) -> bool:
            return True

    return YAML_HEADER + yaml.dump(body, Dumper=Dumper, sort_keys=False, allow_unicode=True,
                                   width=100)


YAML_HEADER = """\
# Generated from the deployment table in deployments/deploy.py; do not edit by hand.
# Regenerate with your own sources, output, cluster and pool:
#   python -m deployments.deploy yaml --source KIND=URI ... --out URI --cluster ADDRESS \\
#       --pool NAME --workdir /path/to/this/checkout > prefect.yaml
# then `prefect deploy --all` (or `--name covid-benchmark`). tests/test_deployments.py checks
# that this file is what the table gives for the defaults in README.md ("Deployments").
"""


def runner_deployments(specs: list[DeploymentSpec]) -> list:
    """``RunnerDeployment`` objects (schedules and triggers attached) for ``serve``."""
    return [
        load_flow(spec.entrypoint).to_deployment(
            name=spec.name, description=spec.description, cron=spec.cron,
            interval=spec.interval_seconds, parameters=spec.parameters,
            triggers=triggers_for(spec), tags=["covid-pipeline"],
        )
        for spec in specs
    ]


def deploy_to_pool(specs: list[DeploymentSpec], pool: str) -> list:
    """Register the deployments for a process work pool (code from this checkout)."""
    from prefect import flow as prefect_flow

    ids = []
    for spec in specs:
        remote = prefect_flow.from_source(source=str(PROJECT), entrypoint=spec.entrypoint)
        ids.append(remote.deploy(
            name=spec.name, work_pool_name=pool, description=spec.description,
            cron=spec.cron, interval=spec.interval_seconds, parameters=spec.parameters,
            triggers=triggers_for(spec), tags=["covid-pipeline"], print_next_steps=False,
        ))
    return ids


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deployments.deploy", description=__doc__)
    p.add_argument("action", choices=["serve", "deploy", "show", "yaml"],
                   help="serve here, deploy to a work pool, show the table, or print "
                        "prefect.yaml for `prefect deploy`")
    p.add_argument("--source", action="append", required=True, metavar="KIND=URI")
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default="paper")
    p.add_argument("--config", default=None, help="a config YAML (see covid-pipeline run)")
    p.add_argument("--cluster", default="local")
    p.add_argument("--weights", default=None)
    p.add_argument("--cron", default="0 3 * * 1", help="benchmark schedule (weekly)")
    p.add_argument("--watch-seconds", type=int, default=300)
    p.add_argument("--pool", default="covid-process", help="work pool (deploy)")
    p.add_argument("--workdir", default="/app",
                   help="yaml: where the pool's flow runs find this project (default: the "
                        "docker image's /app)")
    p.add_argument("--credentials-block", default=None, metavar="secret/NAME",
                   help="object-storage credentials from a Prefect Secret block: secret/NAME")
    args = p.parse_args(argv)

    for s in args.source:
        parse_source(s)
    if args.credentials_block:
        check_block_name(args.credentials_block)
    specs = table(args.source, args.out, args.preset, args.cluster, args.weights, args.cron,
                  args.watch_seconds, args.config, args.credentials_block)
    if args.action == "show":
        for spec in specs:
            print(spec)
        return 0
    if args.action == "yaml":
        sys.stdout.write(prefect_yaml(specs, args.pool, args.workdir))
        return 0
    if args.action == "deploy":
        deploy_to_pool(specs, args.pool)
        return 0
    from prefect import serve

    serve(*runner_deployments(specs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
