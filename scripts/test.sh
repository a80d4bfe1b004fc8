#!/usr/bin/env bash
# The test command: sets up everything it needs from nothing (scripts/setup.sh is
# idempotent), then runs lint and the test suite inside a real, offscreen QGIS.
#   scripts/test.sh                 # what CI runs
#   scripts/test.sh -m slow         # extra pytest arguments pass through
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export QT_QPA_PLATFORM="${QT_QPA_PLATFORM:-offscreen}"
export REMOTECLIP_DATA="${REMOTECLIP_DATA:-$(cd .. && pwd)/shared/data}"
exec .venv/bin/python -m pytest "$@"
