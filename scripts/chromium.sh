#!/usr/bin/env bash
# Make sure a headless browser and its WebDriver are installed for the dashboard's browser test
# (cli/tests/dashboard.rs): Debian's `chromium` and `chromium-driver` packages, which give
# /usr/bin/chromium and /usr/bin/chromedriver.
#
# If both binaries are there, leave them alone. Otherwise install the two packages with apt-get
# (root only; each apt-get call bounded in time). Prints one line. Exits non-zero, saying why,
# if they cannot be installed. Safe to run any number of times.
set -euo pipefail

APT_PACKAGES=(chromium chromium-driver)
# Bounds on the apt-get calls, in seconds (the two packages are ~100 MB together).
UPDATE_WAIT=300
INSTALL_WAIT=900

log() { printf '%s\n' "$*"; }
die() { printf 'chromium.sh: %s\n' "$*" >&2; exit 1; }

installed() {
    command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1
}

main() {
    if installed; then
        log "chromium: installed ($(chromium --version 2>/dev/null | head -n 1 || echo 'version unknown'))"
        return 0
    fi
    [[ $(id -u) == 0 ]] || die "chromium or chromedriver missing, and installing needs root: apt-get install -y ${APT_PACKAGES[*]}"
    log "chromium: not installed; running apt-get install -y ${APT_PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    timeout "$UPDATE_WAIT" apt-get update </dev/null || die "apt-get update failed or took over ${UPDATE_WAIT}s"
    timeout "$INSTALL_WAIT" apt-get install -y --no-install-recommends "${APT_PACKAGES[@]}" </dev/null ||
        die "apt-get install ${APT_PACKAGES[*]} failed or took over ${INSTALL_WAIT}s"
    installed || die "chromium or chromedriver still missing after apt-get install"
    log "chromium: installed ($(chromium --version 2>/dev/null | head -n 1 || echo 'version unknown'))"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
