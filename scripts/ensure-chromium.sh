#!/usr/bin/env bash
# Make sure Chromium is installed for the trajectory viewer's browser test (Playwright drives it; it never
# downloads a browser of its own).
#
# - If /usr/bin/chromium (or RLMBOX_CHROMIUM) exists, exit 0 at once.
# - Else, as root on Debian/Ubuntu: install Debian's chromium package.
# - Else, say what to install, and exit 1.
set -euo pipefail

log() { printf 'ensure-chromium: %s\n' "$*" >&2; }

CHROMIUM="${RLMBOX_CHROMIUM:-/usr/bin/chromium}"
if [[ -x "$CHROMIUM" ]]; then
    exit 0
fi
if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    log "error: no Chromium at $CHROMIUM. Install it (Debian/Ubuntu: apt-get install chromium) or set RLMBOX_CHROMIUM."
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
log "installing Debian's chromium"
if ! apt-get install -y -q chromium >/dev/null 2>&1; then
    apt-get update -q >/dev/null
    apt-get install -y -q chromium >/dev/null
fi
[[ -x "$CHROMIUM" ]] || { log "error: chromium was installed but $CHROMIUM is missing"; exit 1; }
log "$("$CHROMIUM" --version 2>/dev/null || echo chromium) is ready"
