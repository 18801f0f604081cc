"""docker/: the invariants a real build and start cannot show.

CI builds the cpu image and starts the stack for real (docker/ci/stack.sh, then
tests/test_stack.py, which also runs `docker compose config -q` on these files), so what
those prove is not re-checked here. Left: what CI's stack leaves out or cannot see (the GPU
worker and its image's versions, users' secrets and .env.example, the build context's
secrets, the documented commands) and the Dockerfile's layer order.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
ENV_EXAMPLE = DOCKER / ".env.example"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|AUTH_STRING|ACCESS_KEY|TOKEN")


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def env_example() -> dict[str, str]:
    return dict(line.strip().split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#"))


def environment(service: dict) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def dockerfile_args() -> dict[str, str]:
    """Global ARGs (before the first FROM) and their defaults."""
    head = DOCKERFILE.read_text().split("\nFROM ", 1)[0]
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", head, re.M))


def test_every_secret_placeholder_is_required_by_compose():
    """Each change-me of .env.example is `${NAME:?...}` wherever compose uses it: a stack
    never starts on a default secret."""
    text = COMPOSE.read_text()
    placeholders = [k for k, v in env_example().items() if "change-me" in v]
    assert {"POSTGRES_PASSWORD", "PREFECT_AUTH_STRING", "MINIO_ROOT_PASSWORD",
            "S3_SECRET_ACCESS_KEY"} <= set(placeholders)
    for name in placeholders:
        uses = re.findall(r"\$\{" + name + r"(:?[-?+]?)", text)
        assert uses, f"{name} is in .env.example but compose.yaml never uses it"
        assert set(uses) == {":?"}, f"{name} must be required (${{{name}:?...}}) everywhere"


def test_secrets_only_through_variables(services):
    for name, service in services.items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{\w+(:?[?-][^}]*)?\}", value), \
                    f"{name}: {key} must come from docker/.env, not {value!r}"
    assert "change-me" not in "\n".join(
        line for line in COMPOSE.read_text().splitlines() if not line.lstrip().startswith("#"))


def test_env_file_stays_out_of_git_and_images():
    assert ".env" in (DOCKER / ".gitignore").read_text().split()
    ignored = set((DOCKER / "Dockerfile.dockerignore").read_text().split())
    assert {".env", "docker/.env", ".venv", ".git"} <= ignored


def test_gpu_worker_advertises_and_reserves_a_gpu(services):
    """CI has no GPU: the one service its stack leaves out."""
    worker = services["dask-gpu-worker"]
    args = worker["command"]
    assert args[:3] == ["dask", "cuda", "worker"]
    assert args[args.index("--resources") + 1] == "GPU=1"
    assert args[args.index("--nthreads") + 1] == "1"
    assert worker["build"]["target"] == "gpu"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)


def test_build_args_agree_with_the_project(services):
    """The gpu image (not built by CI) gets the versions the project pins and admits."""
    args = dockerfile_args()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().split()
                if "==" in line)

    def spec(name: str, group: list[str]):
        return next(Requirement(r).specifier for r in group if Requirement(r).name == name)

    deps = project["dependencies"]
    assert args["TF_VERSION"] == pins["tensorflow_cpu"]
    assert args["TF_VERSION"] in spec("tensorflow", deps)
    assert args["DASK_VERSION"] in spec("dask", deps)
    assert args["DASK_VERSION"] in spec("distributed", deps)
    assert args["DASK_CUDA_VERSION"] in spec("dask-cuda",
                                             project["optional-dependencies"]["gpu"])
    for name, service in services.items():
        if "build" in service:
            assert {k: str(v) for k, v in service["build"]["args"].items()} == args, name


def test_dependency_layer_comes_before_the_source():
    """A source edit must not rebuild the dependency layer: pip installs the requirements
    from pyproject.toml + constraints.txt before the tree is copied, then the project alone."""
    base = DOCKERFILE.read_text().split("FROM python AS base", 1)[1].split("\nFROM ", 1)[0]
    copies = re.findall(r"^COPY (.+)$", base, re.M)
    assert copies[0].split() == ["pyproject.toml", "constraints.txt", "/src/"]
    assert base.index("-r /opt/requirements.txt") < base.index("COPY . /src")
    assert "pip install --no-deps" in base.split("COPY . /src", 1)[1]


def documented_cli_commands() -> list[list[str]]:
    """`docker compose ... run --rm cli covid-pipeline ...` in the bash blocks of the
    READMEs: the arguments after `covid-pipeline`."""
    found = []
    for readme in (DOCKER / "README.md", ROOT / "README.md"):
        for block in re.findall(r"```bash\n(.*?)```", readme.read_text(), re.S):
            for line in re.sub(r"\\\n", " ", block).splitlines():
                if not line.startswith("docker compose") or "covid-pipeline" not in line:
                    continue
                args = shlex.split(line.split(" #")[0])
                if "covid-pipeline" in args:
                    found.append(args[args.index("covid-pipeline") + 1:])
    return found


def test_documented_stack_commands_parse():
    from covid_pipeline.cli import build_parser
    from flows.cli import add_flow_commands

    parser, sub = build_parser()
    add_flow_commands(sub)
    commands = documented_cli_commands()
    assert len(commands) >= 2
    for args in commands:
        parser.parse_args(args)  # exits 2 on an unknown command or option
