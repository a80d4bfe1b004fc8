#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to a working stack:
#   QGIS 3.22 LTR + xvfb from Debian, a venv (.venv) on Debian's own python3 with
#   system site packages (so that `import qgis` works), and the pinned Python groups.
#
#   scripts/setup.sh                  # runtime + training + dev + distributed (everything)
#   scripts/setup.sh runtime          # only what the command line / plugin need
#   scripts/setup.sh runtime dev      # no torch
#
# Running it again is quick and changes nothing: apt is asked only for missing
# packages, and pip runs only when the requirement files changed since last time.
set -euo pipefail
cd "$(dirname "$0")/.."

groups=("$@")
[ ${#groups[@]} -gt 0 ] || groups=(runtime training dev distributed)
for g in "${groups[@]}"; do
  [ -f "requirements/$g.txt" ] || { echo "setup: unknown group '$g' (runtime, training, dev, distributed)" >&2; exit 2; }
done

say() { printf '\033[1msetup:\033[0m %s\n' "$*"; }
t0=$(date +%s)

# --- system packages -------------------------------------------------------
# python3-pyqt6: Debian's PyQt6 beside QGIS's PyQt5, for the check that the plugin's Qt names exist in Qt6
# (QGIS 4); tests/test_qt6.py runs it in /usr/bin/python3, never in the QGIS process.
# openssl: the command that makes the Dask TLS test's certificates (tests/test_distributed.py)
apt_packages=(qgis python3-qgis qgis-providers python3-gdal xvfb python3-venv xauth python3-pyqt6 openssl)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  say "installing from Debian: ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  say "Debian packages present (QGIS $(dpkg-query -W -f='${Version}' qgis))"
fi

# --- virtual environment -----------------------------------------------------
# Debian's python3 (3.11.2) is the interpreter QGIS's bindings are built for.
if [ ! -x .venv/bin/python ]; then
  say "creating .venv on /usr/bin/python3 with system site packages"
  /usr/bin/python3 -m venv --system-site-packages .venv
fi

# --- Python groups -----------------------------------------------------------
# Packages come from the registry itself: a local find-links folder on some
# machines offers a CPU-only torch whose torchvision does not import.
stamp=.venv/.remoteclip-setup
# numpy and affine are held by the constraints for this QGIS (3.22 is built for numpy 1).
constraints=requirements/constraints-qgis-3.22.txt
want=$( (echo "${groups[*]}"; cat requirements/lock.txt "$constraints"; for g in "${groups[@]}"; do cat "requirements/$g.txt"; done) \
       | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && grep -qx "$want" "$stamp"; then
  say "Python packages up to date (${groups[*]})"
else
  say "installing Python groups: ${groups[*]}"
  reqs=()
  for g in "${groups[@]}"; do reqs+=(-r "requirements/$g.txt"); done
  PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS="" PIP_CERT="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" \
    .venv/bin/python -m pip install -q --disable-pip-version-check -c requirements/lock.txt -c "$constraints" "${reqs[@]}"
  echo "$want" > "$stamp"
fi
# The `remoteclip` command, pointing at this checkout.
if [ ! -x .venv/bin/remoteclip ]; then
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
fi

.venv/bin/python - <<'EOF'
import numpy, osgeo.gdal_array  # noqa: F401  (numpy 2 would break gdal_array)
from qgis.core import Qgis
print(f"setup: ok: QGIS {Qgis.QGIS_VERSION}, numpy {numpy.__version__}")
EOF
say "done in $(( $(date +%s) - t0 )) s"
