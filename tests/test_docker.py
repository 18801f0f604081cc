"""docker/: what can be checked without a Docker engine.

The compose file parses and is self-consistent, its variables and secrets come from
``docker/.env.example``, every command names something the images really hold, and the
Dockerfile's stages, build args and copied paths agree with compose and the project.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import io
import re
import shlex
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
DOCKERIGNORE = DOCKER / "Dockerfile.dockerignore"
ENV_EXAMPLE = DOCKER / ".env.example"
VENV_BIN = Path(sys.executable).parent

REQUIRED_SERVICES = {"postgres", "prefect-server", "prefect-worker", "dask-scheduler",
                     "dask-gpu-worker", "minio", "minio-init"}
OUR_TOOLS = {"covid-pipeline", "prefect", "dask", "python"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|AUTH_STRING|ACCESS_KEY|TOKEN")
# compose interpolation: $$ (a literal $), ${NAME...}, $NAME, or anything else (invalid)
DOLLAR = re.compile(r"\$(\$|\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*)|)")
BRACED = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+]).*)?$", re.S)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not KEY=VALUE: {line!r}"
            out[key.strip()] = value.strip()
    return out


def strings(node):
    """Every string value in a parsed YAML tree."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def variables(text: str) -> set[str]:
    """Names compose interpolates in ``text``; fails on a ``$`` compose would reject."""
    names = set()
    for m in DOLLAR.finditer(text):
        if m.group(1) == "$":
            continue
        if m.group(3):
            names.add(m.group(3))
            continue
        braced = BRACED.match(m.group(2) or "")
        assert braced, f"invalid interpolation {m.group(0)!r} in {text!r} (write $$ for $)"
        names.add(braced.group(1))
    return names


def argv(value) -> list[str]:
    return list(value) if isinstance(value, list) else shlex.split(value or "")


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def ours(service: dict) -> bool:
    return "build" in service or str(service.get("image", "")).startswith("covid-pipeline:")


# -- Dockerfile -------------------------------------------------------------------------

def dockerfile_lines() -> list[str]:
    """Instructions, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.strip().startswith("#") and not current:
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.rstrip().endswith("\\"):
            lines.append(current.strip())
            current = ""
    return [line for line in lines if line]


def dockerfile_args() -> dict[str, str | None]:
    """Global ARGs (before the first FROM), with their defaults."""
    out: dict[str, str | None] = {}
    for line in dockerfile_lines():
        if line.upper().startswith("FROM "):
            break
        if line.upper().startswith("ARG "):
            name, _, default = line[4:].strip().partition("=")
            out[name] = default or None
    return out


def dockerfile_stages() -> dict[str, list[str]]:
    """Stage name → its instructions."""
    stages: dict[str, list[str]] = {}
    current = None
    for line in dockerfile_lines():
        m = re.match(r"FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$", line, re.I)
        if m:
            current = m.group(2) or f"stage-{len(stages)}"
            stages[current] = [line]
        elif current:
            stages[current].append(line)
    return stages


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirement(name: str, group: list[str]) -> Requirement:
    for spec in group:
        req = Requirement(spec)
        if req.name == name:
            return req
    raise AssertionError(f"{name} is not in pyproject.toml")


def constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, sep, version = line.strip().partition("==")
        if sep:
            pins[name.lower().replace("_", "-")] = version
    return pins


# -- the compose file -------------------------------------------------------------------

def test_compose_has_the_services(services):
    assert set(services) >= REQUIRED_SERVICES


def test_depends_on_names_defined_services_with_usable_conditions(services):
    for name, service in services.items():
        deps = service.get("depends_on") or {}
        deps = {d: {"condition": "service_started"} for d in deps} if isinstance(deps, list) \
            else deps
        for dep, how in deps.items():
            assert dep in services, f"{name} depends on undefined service {dep}"
            condition = how.get("condition")
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health check"
            elif condition == "service_completed_successfully":
                assert str(services[dep].get("restart", "no")) == "no", dep
            else:
                assert condition == "service_started", (name, dep, condition)


def test_long_running_services_have_health_checks(services):
    for name in REQUIRED_SERVICES - {"minio-init"}:
        test = services[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), name
        if test[:2] == ["CMD", "python"]:
            assert test[2] == "-c"
            compile(test[3], f"{name} healthcheck", "exec")


def test_every_variable_is_in_env_example(compose):
    used = set()
    for text in strings(compose):
        used |= variables(text)
    defined = env_example()
    assert used, "compose.yaml interpolates no variable"
    assert not used - set(defined), f"missing from .env.example: {sorted(used - set(defined))}"
    assert not set(defined) - used, f"unused in compose: {sorted(set(defined) - used)}"


def test_secrets_only_through_variables(compose, services):
    for name, service in services.items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:?[?-][^}]*)?\}", value), \
                    f"{name}: {key} must come from docker/.env, not {value!r}"
    text = "\n".join(strings(compose))  # values, not comments
    for key, value in env_example().items():
        if re.search(r"PASSWORD|SECRET|AUTH_STRING", key):
            assert value not in text, f"the placeholder of {key} is written into compose.yaml"
    assert "change-me" not in text


def test_env_example_placeholders_and_git_ignore():
    env = env_example()
    for key, value in env.items():
        if re.search(r"PASSWORD|SECRET", key):
            assert "change-me" in value, f"{key} in .env.example must be a change-me placeholder"
            assert len(value) >= 8, f"{key}: MinIO wants 8+ characters"
    assert re.fullmatch(r"[^:]+:.*change-me.*", env["PREFECT_AUTH_STRING"])
    assert ".env" in (DOCKER / ".gitignore").read_text().split()


def test_prefect_settings_are_real_settings(services):
    spec = importlib.util.find_spec("prefect")
    types = Path(next(iter(spec.submodule_search_locations))) / "settings" / "_types.py"
    if not types.is_file():
        pytest.skip("this Prefect has no settings/_types.py to read setting names from")
    accessors = re.findall(r'^\s*"([a-z0-9_.]+)",$', types.read_text(), re.M)
    names = {"PREFECT_" + a.replace(".", "_").upper() for a in accessors}
    assert "PREFECT_SERVER_API_AUTH_STRING" in names and "PREFECT_API_AUTH_STRING" in names
    used = {k for s in services.values() for k in environment(s) if k.startswith("PREFECT_")}
    assert used and not used - names, f"not Prefect settings: {sorted(used - names)}"
    server = environment(services["prefect-server"])
    assert server["PREFECT_SERVER_DATABASE_DRIVER"] == "postgresql+asyncpg"
    assert server["PREFECT_SERVER_DATABASE_HOST"] == "postgres"
    assert server["PREFECT_SERVER_API_AUTH_STRING"].startswith("${PREFECT_AUTH_STRING")
    for name, service in services.items():
        env = environment(service)
        if "PREFECT_API_URL" in env:
            assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api", name
            assert "${PREFECT_AUTH_STRING" in env.get("PREFECT_API_AUTH_STRING", ""), name


def test_flow_and_task_processes_reach_prefect_s3_and_the_weights(services):
    """The flow process (weights preflight) and the Dask workers where task runs execute."""
    assert "KERAS_HOME=/var/lib/keras" in DOCKERFILE.read_text()
    for name in ("prefect-worker", "cli", "dask-gpu-worker"):
        env = environment(services[name])
        for key in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "AWS_ACCESS_KEY_ID",
                    "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
            assert key in env, f"{name} lacks {key}"
        assert "keras-cache:/var/lib/keras" in services[name]["volumes"], name


def test_our_commands_name_what_exists(services):
    for name, service in services.items():
        if not ours(service):
            continue
        args = argv(service.get("command"))
        assert "entrypoint" not in service, f"{name}: our images are run by command"
        assert args and args[0] in OUR_TOOLS, f"{name}: unknown tool {args[:1]}"
        check_command(name, args)


def check_command(where: str, args: list[str]) -> None:
    tool, rest = args[0], args[1:]
    if tool == "covid-pipeline":
        check_covid_pipeline(rest)
    elif tool in ("prefect", "dask"):
        assert (VENV_BIN / tool).exists(), f"{where}: {tool} is not installed in {VENV_BIN}"
        (check_prefect if tool == "prefect" else check_dask)(where, rest)
    elif tool == "python":
        assert rest[0] == "-m" and importlib.util.find_spec(rest[1]), (where, args)
    else:
        raise AssertionError(f"{where}: unknown tool {tool}")


def check_prefect(where: str, args: list[str]) -> None:
    """``prefect GROUP COMMAND --options``: the group's CLI module defines the options."""
    spec = importlib.util.find_spec("prefect")
    module = Path(next(iter(spec.submodule_search_locations))) / "cli" / f"{args[0]}.py"
    assert module.is_file(), f"{where}: no `prefect {args[0]}` command group"
    source = module.read_text()
    assert f"def {args[1]}(" in source, f"{where}: no `prefect {args[0]} {args[1]}`"
    for option in (a.split("=")[0] for a in args[2:] if a.startswith("--")):
        assert f'"{option}"' in source, f"{where}: `prefect {args[0]} {args[1]}` has no {option}"


def check_covid_pipeline(args: list[str]) -> set[str]:
    from covid_pipeline.cli import build_parser
    from flows.cli import add_flow_commands

    parser, sub = build_parser()
    add_flow_commands(sub)
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    positional = [a for a in args if not a.startswith("-")]
    if positional:
        assert positional[0] in subs.choices, f"covid-pipeline has no {positional[0]!r}"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            parser.parse_args(args)
        except SystemExit as exc:
            assert exc.code == 0, f"covid-pipeline {shlex.join(args)}: bad arguments"
    return set(subs.choices)


def check_dask(service: str, args: list[str]) -> None:
    subcommands = {e.name for e in importlib.metadata.entry_points(group="dask_cli")}
    if args[0] == "cuda":
        # dask-cuda's `dask cuda worker`, in the gpu image only
        assert "dask-cuda" in " ".join(dockerfile_stages()["gpu-build"])
        assert any(Requirement(r).name == "dask-cuda" for r in pyproject()[
            "optional-dependencies"]["gpu"])
        assert args[1] == "worker", (service, args)
        if "cuda" not in subcommands:
            return
    assert args[0] in subcommands, f"{service}: `dask {args[0]}` does not exist"
    if args[0] == "scheduler":
        from distributed.cli.dask_scheduler import main

        options = {o for p in main.params for o in p.opts}
        given = {a.split("=")[0] for a in args[1:] if a.startswith("--")}
        assert given <= options, f"dask scheduler has no {sorted(given - options)}"


def test_gpu_worker_advertises_and_reserves_a_gpu(services):
    worker = services["dask-gpu-worker"]
    args = argv(worker["command"])
    assert args[args.index("--resources") + 1] == "GPU=1"
    assert args[args.index("--nthreads") + 1] == "1"
    assert "tcp://dask-scheduler:8786" in args
    assert worker["build"]["target"] == "gpu"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])
               and (d.get("count") == "all" or isinstance(d.get("count"), int)
                    or d.get("device_ids"))
               for d in devices)


def test_the_flow_clients_find_the_scheduler(services):
    scheduler = argv(services["dask-scheduler"]["command"])
    assert scheduler[:2] == ["dask", "scheduler"]
    assert scheduler[scheduler.index("--port") + 1] == "8786"


def test_minio_init_creates_the_bucket(services):
    script = " ".join(argv(services["minio-init"]["command"]))
    assert "mc mb --ignore-existing" in script and "$$S3_BUCKET" in script
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert argv(services["minio"]["command"])[:2] == ["server", "/data"]


# -- images -----------------------------------------------------------------------------

def test_builds_use_the_dockerfile_targets_and_its_args(services):
    stages = dockerfile_stages()
    declared = dockerfile_args()
    builds = {name: s["build"] for name, s in services.items() if "build" in s}
    assert {"cpu", "gpu"} <= {b["target"] for b in builds.values()}
    for name, build in builds.items():
        assert (COMPOSE.parent / build["context"]).resolve() == ROOT, name
        assert (ROOT / build["dockerfile"]).resolve() == DOCKERFILE, name
        assert build["target"] in stages, f"{name}: no stage {build['target']!r}"
        args = {k: str(v) for k, v in build["args"].items()}
        assert set(args) == set(declared), f"{name}: args {sorted(args)} != ARGs {sorted(declared)}"
        assert args == declared, f"{name}: build args differ from the Dockerfile's defaults"
        assert services[name]["image"] == f"covid-pipeline:{build['target']}", name


def test_build_args_agree_with_the_project():
    args = dockerfile_args()
    project = pyproject()
    pins = constraints()
    assert all(args.values()), "every global ARG has a default"
    assert project["requires-python"] and args["PYTHON_VERSION"] in \
        Requirement(f"python{project['requires-python']}").specifier
    deps = project["dependencies"]
    assert args["TF_VERSION"] == pins["tensorflow-cpu"]
    assert args["TF_VERSION"] in requirement("tensorflow-cpu", deps).specifier
    assert args["TF_VERSION"] in requirement("tensorflow", deps).specifier
    for name in ("dask", "distributed"):
        assert args["DASK_VERSION"] in requirement(name, deps).specifier, name
    gpu = project["optional-dependencies"]["gpu"]
    assert args["DASK_CUDA_VERSION"] in requirement("dask-cuda", gpu).specifier


def test_dockerfile_stages_copies_and_user():
    stages = dockerfile_stages()
    assert {"base", "cpu", "gpu"} <= set(stages)
    seen: list[str] = []
    for name, lines in stages.items():
        parent = lines[0].split()[1]
        assert "${" in parent or ":" in parent or parent in seen, f"{name}: FROM {parent}?"
        for line in lines[1:]:
            if not line.upper().startswith(("COPY ", "ADD ")):
                continue
            parts = [p for p in shlex.split(line)[1:] if not p.startswith("--")]
            source = re.search(r"--from=(\S+)", line)
            if source:
                assert source.group(1) in seen, f"{name}: COPY --from unknown {source.group(1)}"
                continue
            for src in parts[:-1]:
                assert (ROOT / src).exists(), f"{name}: COPY {src}: not in the repository"
        seen.append(name)
    base = " ".join(stages["base"])
    assert "-c /opt/constraints.txt" in base and '".[s3]"' in base
    gpu_build = " ".join(stages["gpu-build"])
    assert "pip uninstall -y tensorflow-cpu" in gpu_build
    assert '"tensorflow[and-cuda]==${TF_VERSION}"' in gpu_build
    for target in ("cpu", "gpu"):
        users = [line.split()[1] for line in stages[target] if line.upper().startswith("USER ")]
        assert users and users[-1] not in ("root", "0"), f"{target} runs as root"
        assert any('"covid-pipeline"' in line for line in stages[target]
                   if line.upper().startswith(("CMD ", "ENTRYPOINT "))), target


def test_dockerignore_keeps_the_context_small_and_secret_free():
    patterns = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    for needed in (".venv", ".git", "out", "covid-pipeline-demo", "docker/.env",
                   "*.egg-info", "**/__pycache__"):
        assert needed in patterns, f"{DOCKERIGNORE.name} does not exclude {needed}"


# -- the documented commands ------------------------------------------------------------

def documented_commands() -> list[list[str]]:
    """``docker compose`` and ``dask`` commands in the bash blocks of both READMEs."""
    commands = []
    for readme in (DOCKER / "README.md", ROOT / "README.md"):
        for block in re.findall(r"```bash\n(.*?)```", readme.read_text(), re.S):
            for line in re.sub(r"\\\n", " ", block).splitlines():
                line = line.split(" #")[0].strip()
                if line.startswith(("docker compose ", "dask ")):
                    commands.append(shlex.split(line))
    return commands


def test_documented_stack_commands_exist():
    checked = 0
    for args in documented_commands():
        if args[0] == "dask":
            check_dask("README", args[1:])
        if args[:2] != ["docker", "compose"] or "run" not in args:
            continue
        assert args[2:4] == ["-f", "docker/compose.yaml"], shlex.join(args)
        rest = args[args.index("--rm") + 1:]
        while rest[0] == "-v":
            rest = rest[2:]
        assert rest[0] == "cli", shlex.join(args)
        if rest[1] in OUR_TOOLS:
            check_command("README", rest[1:])
            checked += 1
    assert checked >= 3
