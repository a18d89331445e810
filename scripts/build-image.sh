#!/usr/bin/env bash
# Build the sandbox image rlmbox-sandbox:VERSION (VERSION from pyproject.toml) from Dockerfile.sandbox.
#
# The image build itself runs without network (`docker build --network none`): the kernel's pinned
# wheels (sandbox_image/requirements.txt) are downloaded here on the host, for the base image's exact
# Python version and architecture, into build/wheelhouse/ first.
#
# Base image:
#   - BASE_IMAGE set: use it. rlmbox-base:bookworm is built offline (scripts/build-base-image.sh) when
#     missing; any other missing image is pulled.
#   - otherwise python:3.12-slim when present locally, or pulled (at most 60 s); if that fails, the
#     offline base rlmbox-base:bookworm. With CI=true no pull is tried: the offline base is used.
#
# An existing image is kept when it was built from the same sources (Dockerfile.sandbox, .dockerignore,
# sandbox_image/: their checksum is a label of the image), on the same base, and that base has not
# changed since; otherwise it is rebuilt (Docker's layer cache keeps that quick).
#
# Environment: FORCE=1 rebuilds even an up-to-date image; FORCE_BASE=1 rebuilds the offline base too;
#              BASE_IMAGE; PYTHON (host interpreter with pip for downloading, default python3); CI.
set -euo pipefail

log() { printf 'build-image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

cd "$(dirname "${BASH_SOURCE[0]}")/.."

DEFAULT_BASE=python:3.12-slim
OFFLINE_BASE=rlmbox-base:bookworm
PYTHON="${PYTHON:-python3}"
WHEELHOUSE=build/wheelhouse
REQUIREMENTS=sandbox_image/requirements.txt

VERSION="$(sed -n 's/^version[[:space:]]*=[[:space:]]*"\([^"]*\)".*$/\1/p' pyproject.toml | head -n 1)"
[[ -n "$VERSION" ]] || die "could not read the version from pyproject.toml"
IMAGE="rlmbox-sandbox:${VERSION}"

bash scripts/ensure-docker.sh

have_image() { docker image inspect "$1" >/dev/null 2>&1; }
label_of() { docker image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true; }

# Fingerprint of everything the image is built from in this repository; stored as a label so that an
# image built from other sources (same version, changed kernel code or pins) is rebuilt.
INPUTS_LABEL=rlmbox.build.inputs-sha256
BASE_ID_LABEL=rlmbox.build.base-id
inputs_sha="$(
    find Dockerfile.sandbox .dockerignore sandbox_image -type f \
        ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' -print0 |
        LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1
)"

if [[ "${FORCE:-0}" != 1 ]] && have_image "$IMAGE"; then
    built_base="$(label_of "$IMAGE" org.opencontainers.image.base.name)"
    built_base_id="$(label_of "$IMAGE" "$BASE_ID_LABEL")"
    current_base_id="$(docker image inspect --format '{{.Id}}' "$built_base" 2>/dev/null || true)"
    if [[ "$(label_of "$IMAGE" "$INPUTS_LABEL")" != "$inputs_sha" ]]; then
        log "$IMAGE exists but was built from other sources (Dockerfile.sandbox, sandbox_image/); rebuilding"
    elif [[ -n "${BASE_IMAGE:-}" && "$BASE_IMAGE" != "$built_base" ]]; then
        log "$IMAGE exists but was built on ${built_base:-another base}, not $BASE_IMAGE; rebuilding"
    elif [[ -n "$current_base_id" && "$current_base_id" != "$built_base_id" ]]; then
        log "$IMAGE exists but its base $built_base has changed since; rebuilding"
    else
        log "$IMAGE is up to date (to rebuild it anyway: FORCE=1 make image)"
        exit 0
    fi
fi

build_offline_base() {
    FORCE="${FORCE_BASE:-0}" bash scripts/build-base-image.sh
}

try_pull() {
    log "pulling $1 (at most 60 s)"
    if timeout 60 docker pull --quiet "$1" >/dev/null; then
        return 0
    fi
    return 1
}

# ---- choose the base image ------------------------------------------------------------------------
if [[ -n "${BASE_IMAGE:-}" ]]; then
    base="$BASE_IMAGE"
    if [[ "$base" == "$OFFLINE_BASE" ]]; then
        build_offline_base
    elif ! have_image "$base"; then
        try_pull "$base" || die "base image $base is not available locally and could not be pulled"
    fi
elif have_image "$DEFAULT_BASE"; then
    base="$DEFAULT_BASE"
elif [[ "${CI:-}" == true ]]; then
    log "CI: using the offline base $OFFLINE_BASE (no registry pulls)"
    base="$OFFLINE_BASE"
    build_offline_base
elif try_pull "$DEFAULT_BASE"; then
    base="$DEFAULT_BASE"
else
    log "could not pull $DEFAULT_BASE (no access to the image registry?); falling back to the offline base $OFFLINE_BASE built from Debian packages"
    base="$OFFLINE_BASE"
    build_offline_base
fi
have_image "$base" || die "base image $base is missing"
base_id="$(docker image inspect --format '{{.Id}}' "$base")"
log "base image: $base"

# ---- inspect the base: Python version, architecture, glibc ----------------------------------------
probe='
import os, platform, sys
try:
    import ensurepip, venv  # noqa: F401
except ImportError as exc:
    sys.exit(f"python3 lacks the venv module ({exc}); on Debian install python3-venv")
try:
    libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
except (ValueError, OSError):
    libc = ""
print(f"{sys.version_info[0]}.{sys.version_info[1]}", platform.machine(), libc.replace(" ", "-"))
'
info="$(docker run --rm --network none --entrypoint python3 "$base" -c "$probe")" ||
    die "could not run python3 in $base (it needs python3 with the venv module)"
read -r py_version arch libc <<<"$info"
[[ "$py_version" =~ ^3\.[0-9]+$ ]] || die "unexpected Python version '$py_version' in $base"
case "$arch" in
    x86_64 | aarch64) ;;
    amd64) arch=x86_64 ;;
    arm64) arch=aarch64 ;;
    *) die "unsupported architecture '$arch' in $base (x86_64 or aarch64 needed)" ;;
esac
[[ "$libc" =~ ^glibc-2\.([0-9]+) ]] ||
    die "$base does not use glibc ('$libc'); the kernel's manylinux wheels need a glibc-based image"
glibc_minor="${BASH_REMATCH[1]}"
log "base: Python $py_version, $arch, glibc 2.$glibc_minor"

# ---- download the wheelhouse on the host ----------------------------------------------------------
"$PYTHON" -m pip --version >/dev/null 2>&1 ||
    die "'$PYTHON -m pip' does not work: set PYTHON to a Python interpreter with pip"

# Every manylinux tag the base's glibc can run, legacy aliases included.
platforms=()
for ((minor = glibc_minor; minor >= 5; minor--)); do
    platforms+=(--platform "manylinux_2_${minor}_${arch}")
done
platforms+=(--platform "manylinux2014_${arch}")
if [[ "$arch" == x86_64 ]]; then
    platforms+=(--platform "manylinux2010_${arch}" --platform "manylinux1_${arch}")
fi

rm -rf "$WHEELHOUSE"
mkdir -p "$WHEELHOUSE"
log "downloading the kernel's wheels for CPython $py_version/$arch into $WHEELHOUSE"
start=$SECONDS
# --no-deps: requirements.txt pins the whole closure; the offline install in the image resolves the
# dependencies again and fails if a pin is missing.
"$PYTHON" -m pip download --quiet --disable-pip-version-check \
    --only-binary=:all: --no-deps \
    --python-version "$py_version" --implementation cp --abi "cp${py_version/./}" \
    "${platforms[@]}" \
    --dest "$WHEELHOUSE" --requirement "$REQUIREMENTS" ||
    die "downloading the wheels failed (is PyPI reachable with $PYTHON's pip?)"
log "$(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels, $(du -sh "$WHEELHOUSE" | cut -f1), in $((SECONDS - start)) s"

# ---- build ----------------------------------------------------------------------------------------
log "building $IMAGE from $base (docker build --network none)"
start=$SECONDS
docker build --network none --force-rm \
    -f Dockerfile.sandbox \
    --build-arg "BASE_IMAGE=$base" \
    --build-arg "RLMBOX_VERSION=$VERSION" \
    --label "$INPUTS_LABEL=$inputs_sha" \
    --label "$BASE_ID_LABEL=$base_id" \
    -t "$IMAGE" \
    . || die "docker build failed"

size="$(docker image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}')"
log "built $IMAGE in $((SECONDS - start)) s: $size (base $base)"
