#!/usr/bin/env bash
# Check the committed Prometheus files with promtool (issue 17):
#   promtool check config docs/prometheus/prometheus.yml   (also checks the rule files it names)
#   promtool check rules  docs/prometheus/alerts.yml
#   promtool test rules   docs/prometheus/alerts.test.yml  (the alerts fire, or stay quiet, on
#                                                           synthetic series)
#
# promtool comes with Debian's `prometheus` package. If it is missing, install the package with
# apt-get (root only; each apt-get call bounded in time; without recommends, so no node
# exporter). The package's service is not started by this script. Exits non-zero, saying why, if
# promtool cannot be installed or a check fails. Safe to run any number of times.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

APT_PACKAGES=(prometheus)
# Bounds on the apt-get calls, in seconds (the package is ~30 MB).
UPDATE_WAIT=300
INSTALL_WAIT=600

log() { printf '%s\n' "$*"; }
die() { printf 'promtool.sh: %s\n' "$*" >&2; exit 1; }

installed() {
    command -v promtool >/dev/null 2>&1
}

version() {
    promtool --version 2>&1 | head -n 1 || echo 'version unknown'
}

ensure_promtool() {
    if installed; then
        log "promtool: installed ($(version))"
        return 0
    fi
    [[ $(id -u) == 0 ]] || die "promtool missing, and installing needs root: apt-get install -y ${APT_PACKAGES[*]}"
    log "promtool: not installed; running apt-get install -y ${APT_PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    timeout "$UPDATE_WAIT" apt-get update </dev/null || die "apt-get update failed or took over ${UPDATE_WAIT}s"
    timeout "$INSTALL_WAIT" apt-get install -y --no-install-recommends "${APT_PACKAGES[@]}" </dev/null ||
        die "apt-get install ${APT_PACKAGES[*]} failed or took over ${INSTALL_WAIT}s"
    installed || die "promtool still missing after apt-get install ${APT_PACKAGES[*]}"
    log "promtool: installed ($(version))"
}

main() {
    ensure_promtool
    promtool check config docs/prometheus/prometheus.yml || die "promtool check config failed"
    promtool check rules docs/prometheus/alerts.yml || die "promtool check rules failed"
    promtool test rules docs/prometheus/alerts.test.yml || die "promtool test rules failed"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
