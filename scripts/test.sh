#!/usr/bin/env bash
# The test command: sets up everything it needs from nothing (scripts/setup.sh and the matrix chroots
# are made once and reused), then runs the suite on each QGIS of the matrix:
#   3.22  the host (Debian bookworm): lint and the whole suite
#   3.40  QGIS 3.40 LTR in a Debian trixie chroot (scripts/qgis_matrix.sh): the QGIS and core tests
#   3.44  QGIS 3.44 in a Debian sid chroot: the same
# Every leg runs even when one fails; each prints its time, and the command fails if any leg failed.
#
#   scripts/test.sh                          # all legs (what CI runs, through .ci/run)
#   scripts/test.sh -m "slow or not slow"    # extra pytest arguments go to the host leg (here: slow tests too)
#   REMOTECLIP_QGIS_LEGS="3.22" scripts/test.sh ...   # only some legs
set -euo pipefail
cd "$(dirname "$0")/.."

legs=${REMOTECLIP_QGIS_LEGS:-3.22 3.40 3.44}
for leg in $legs; do
  case "$leg" in 3.22|3.40|3.44) ;; *) echo "test: unknown QGIS leg '$leg' (3.22, 3.40, 3.44)" >&2; exit 2 ;; esac
done
# The tests that need QGIS, or that run core on QGIS's own Python and numpy; not those that need torch.
MATRIX_TESTS=(tests/test_qgis_api.py tests/test_plugin.py tests/test_processing.py tests/test_dock.py
              tests/test_packaging.py tests/test_raster.py tests/test_tiles.py tests/test_jobs.py
              tests/test_vectors.py tests/test_cli.py tests/test_gdal_exceptions.py tests/test_dock_layout.py
              tests/test_layer_styles.py tests/test_summary.py)

say() { printf '\033[1mtest:\033[0m %s\n' "$*"; }
t_all=$(date +%s)
scripts/setup.sh
export QT_QPA_PLATFORM="${QT_QPA_PLATFORM:-offscreen}"
export REMOTECLIP_DATA="${REMOTECLIP_DATA:-$(cd .. && pwd)/shared/data}"

declare -A status times
run_leg() {  # run_leg LEG COMMAND...
  local leg=$1 t rc
  shift
  say "QGIS $leg: $*"
  t=$(date +%s)
  set +e
  "$@"
  rc=$?
  set -e
  times[$leg]=$(( $(date +%s) - t ))
  status[$leg]=$([ "$rc" -eq 0 ] && echo passed || echo "FAILED (exit $rc)")
  say "QGIS $leg: ${status[$leg]} in ${times[$leg]} s"
}

for leg in $legs; do
  if [ "$leg" = 3.22 ]; then
    run_leg 3.22 .venv/bin/python -m pytest "$@"
    continue
  fi
  if [ -z "${REMOTECLIP_TEST_BUNDLE:-}" ]; then
    # the chroots have no torch: the tiny test bundle is made here, once, by the fixture's own function
    bundle_dir=$(mktemp -d)
    trap 'rm -rf "$bundle_dir"' EXIT
    .venv/bin/python -c "import sys; from pathlib import Path; from training.export import export_tiny_test_bundle; \
export_tiny_test_bundle(Path(sys.argv[1]))" "$bundle_dir/tiny" >/dev/null
    export REMOTECLIP_TEST_BUNDLE=$bundle_dir/tiny
  fi
  run_leg "$leg" scripts/qgis_matrix.sh "$leg" -q "${MATRIX_TESTS[@]}"
done

failed=0
say "summary ($(( $(date +%s) - t_all )) s in all, set-up included):"
for leg in $legs; do
  printf '  QGIS %-5s %-20s %5s s\n' "$leg" "${status[$leg]}" "${times[$leg]}"
  [ "${status[$leg]}" = passed ] || failed=1
done
exit "$failed"
