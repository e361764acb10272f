#!/usr/bin/env bash
# The mutation harness (conformance/mutants): write each catalogued semantic bug into a
# backend, run its conformance suite, report which cases catch it in conformance/MUTANTS.md.
#   scripts/mutants.sh                      every backend (about an hour: see MUTANTS.md)
#   scripts/mutants.sh redis                one backend
#   scripts/mutants.sh --area queue::lease  one rule area
#   scripts/mutants.sh --unsettled          rerun what the report does not show as caught
#   scripts/mutants.sh --list               check the catalogues, run nothing
# Needs the brokers of the backends it mutates (scripts/brokers.sh). Not part of CI: too slow.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build -q --release -p courier-mutants
exec target/release/mutants "$@"
