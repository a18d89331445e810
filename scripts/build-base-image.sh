#!/usr/bin/env bash
# Build the offline base image rlmbox-base:bookworm from Debian packages (no image registry needed):
# a minimal Debian bookworm root filesystem made by debootstrap with python3, python3-venv and
# ca-certificates, imported into Docker. About 45-60 s and 300 MB of downloads from the Debian mirror.
#
# Skips when the image exists already, unless FORCE=1.
# Environment: FORCE=1, BASE_IMAGE_NAME (default rlmbox-base:bookworm),
#              DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

log() { printf 'build-base-image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

cd "$(dirname "${BASH_SOURCE[0]}")/.."

IMAGE="${BASE_IMAGE_NAME:-rlmbox-base:bookworm}"
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PACKAGES=python3,python3-venv,ca-certificates

bash scripts/ensure-docker.sh

if [[ "${FORCE:-0}" != 1 ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "$IMAGE exists already (to rebuild it: FORCE=1 make base-image)"
    exit 0
fi

[[ "$(id -u)" -eq 0 ]] || die "debootstrap needs root: run this script as root"

if ! command -v debootstrap >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die "debootstrap is missing and apt-get is not available to install it"
    log "installing debootstrap with apt-get"
    export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
    apt-get update -q >&2 || die "apt-get update failed"
    apt-get install -y -q -o Dpkg::Use-Pty=0 debootstrap >&2 || die "apt-get install debootstrap failed"
fi

# On disk rather than in a possibly small or nodev /tmp.
ROOTFS="$(mktemp -d "${TMPDIR:-/var/tmp}/rlmbox-base.XXXXXX")"
cleanup() {
    # debootstrap mounts /proc and /sys inside the target while it works; if it failed half-way,
    # unmount what is left before deleting, and never cross into another file system.
    local mnt
    if [[ -r /proc/mounts ]]; then
        awk -v root="$ROOTFS" 'index($2, root "/") == 1 { print $2 }' /proc/mounts | sort -r |
            while read -r mnt; do umount -l "$mnt" 2>/dev/null || true; done
    fi
    rm -rf --one-file-system "$ROOTFS"
    rm -f "$ROOTFS.log"
}
trap cleanup EXIT

log "debootstrap $SUITE ($PACKAGES) from $MIRROR into $ROOTFS"
start=$SECONDS
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" \
    >"$ROOTFS.log" 2>&1 || {
    tail -n 40 "$ROOTFS.log" >&2
    die "debootstrap failed (last lines above)"
}
log "debootstrap done in $((SECONDS - start)) s"

# Package indexes and caches are not needed in the image.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin \
    "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/archives/partial/* \
    "$ROOTFS"/var/cache/debconf/*-old "$ROOTFS"/var/log/apt/* "$ROOTFS"/var/log/dpkg.log \
    "$ROOTFS"/var/log/bootstrap.log "$ROOTFS"/tmp/* "$ROOTFS"/root/.cache
mkdir -p "$ROOTFS/var/lib/apt/lists/partial"

[[ -x "$ROOTFS/usr/bin/python3" ]] || die "python3 is missing from the new root filesystem"

log "importing into Docker as $IMAGE"
tar --numeric-owner -C "$ROOTFS" -c . |
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        --message "Debian $SUITE minbase + $PACKAGES (debootstrap)" \
        - "$IMAGE" >/dev/null

docker run --rm --network none "$IMAGE" python3 -c 'import venv, ensurepip' ||
    die "$IMAGE was imported but its python3 lacks venv/ensurepip"
log "built $IMAGE in $((SECONDS - start)) s ($(docker image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
