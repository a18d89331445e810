#!/usr/bin/env bash
# Make sure a Docker engine answers `docker info`.
#
# - If it already does, exit 0 at once.
# - Else, as root on Debian/Ubuntu: install Debian's engine (docker.io) when dockerd is missing, start
#   dockerd in the background without container networking (sandboxes run with --network none and
#   image builds install from a local wheelhouse, so no bridge, no iptables, no masquerading), and
#   wait until it answers (at most DOCKER_WAIT_SECONDS, default 60).
# - Else, say what to install or start, and exit 1.
#
# Environment: DOCKERD_LOG (default /var/log/rlmbox-dockerd.log), DOCKER_WAIT_SECONDS (default 60).
set -euo pipefail

log() { printf 'ensure-docker: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

DOCKERD_LOG="${DOCKERD_LOG:-/var/log/rlmbox-dockerd.log}"
DOCKER_WAIT_SECONDS="${DOCKER_WAIT_SECONDS:-60}"

# `docker info` is bounded too: a wedged daemon must not hang the caller.
docker_answers() { command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1; }

if docker_answers; then
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    if command -v docker >/dev/null 2>&1; then
        log "the Docker client is installed but no engine answers 'docker info'."
    else
        log "Docker is not installed."
    fi
    die "install Docker Engine and start it (and make sure this user may use it, e.g. the 'docker' group), or run this script as root on Debian/Ubuntu so it can install and start Debian's docker.io itself."
fi

# Is a dockerd process running already (e.g. still starting up)?
dockerd_running() {
    local comm
    for comm in /proc/[0-9]*/comm; do
        if [[ "$(cat "$comm" 2>/dev/null)" == "dockerd" ]]; then
            return 0
        fi
    done
    return 1
}

if ! command -v dockerd >/dev/null 2>&1; then
    log "no Docker engine found: installing Debian's docker.io with apt-get"
    # Keep the package's init scripts from starting a daemon with default (networked) settings:
    # this script starts it itself, below. An existing policy-rc.d is left alone.
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        created_policy=1
    fi
    cleanup_policy() { if [[ "$created_policy" == 1 ]]; then rm -f "$policy"; fi; }
    trap cleanup_policy EXIT
    export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
    apt-get update -q >&2 || die "apt-get update failed"
    apt-get install -y -q -o Dpkg::Use-Pty=0 docker.io >&2 || die "apt-get install docker.io failed"
    cleanup_policy
    trap - EXIT
    command -v dockerd >/dev/null 2>&1 || die "docker.io is installed but dockerd is not on PATH"
    command -v docker >/dev/null 2>&1 || die "docker.io is installed but the docker client is not on PATH"
fi

if dockerd_running; then
    log "a dockerd process is running already; waiting for it to answer"
    started_pid=""
else
    log "starting dockerd (no bridge, no iptables), log: $DOCKERD_LOG"
    mkdir -p "$(dirname "$DOCKERD_LOG")"
    # setsid + nohup: the daemon outlives this script and the terminal or CI step that ran it; its
    # output goes only to the log file, so it holds no pipe of the caller open.
    setsid nohup dockerd --bridge=none --iptables=false --ip-masq=false \
        </dev/null >>"$DOCKERD_LOG" 2>&1 &
    started_pid=$!
fi

show_log_tail() {
    if [[ -f "$DOCKERD_LOG" ]]; then
        log "last lines of $DOCKERD_LOG:"
        tail -n 30 "$DOCKERD_LOG" >&2 || true
    fi
}

deadline=$((SECONDS + DOCKER_WAIT_SECONDS))
until docker_answers; do
    # (setsid may fork when it leads a process group: then only dockerd itself is left to look for.)
    if [[ -n "$started_pid" ]] && ! kill -0 "$started_pid" 2>/dev/null && ! dockerd_running; then
        show_log_tail
        die "dockerd exited during start-up"
    fi
    if ((SECONDS >= deadline)); then
        show_log_tail
        die "the Docker engine did not answer 'docker info' within ${DOCKER_WAIT_SECONDS} s"
    fi
    sleep 1
done
log "Docker engine is ready ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo 'version unknown'))"
