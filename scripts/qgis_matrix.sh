#!/usr/bin/env bash
# Run tests on another QGIS than the host's, inside a Debian chroot made with debootstrap:
#
#   scripts/qgis_matrix.sh 3.40 TESTS...     # QGIS 3.40 LTR from Debian trixie (Python 3.13, numpy 2)
#   scripts/qgis_matrix.sh 3.44 TESTS...     # QGIS 3.44 from Debian sid
#   scripts/qgis_matrix.sh 3.40 --freeze     # print the leg's pip freeze (for requirements/constraints-qgis-3.40.txt)
#   scripts/qgis_matrix.sh 3.40 --run CMD... # any command in the leg (the venv's python first on PATH)
#
# The chroot is made once and reused: ${REMOTECLIP_MATRIX_DIR:-~/.cache/remoteclip-qgis-matrix}/<suite>.
# Each stage (debootstrap, apt packages, venv) leaves a stamp; a stage runs again only when its
# inputs change (the package list, the requirement and constraint files), so a second run starts
# the tests within seconds. Inside: QGIS, GDAL and numpy from Debian; a venv with
# --system-site-packages (/opt/remoteclip-venv) holding requirements/qgis-matrix.txt from PyPI,
# pinned by requirements/constraints-qgis-<leg>.txt and by Debian's own numpy (pip never replaces it).
# No torch: tests that need a model get the bundle at $REMOTECLIP_TEST_BUNDLE (made on the host).
#
# The repository, the shared data and the test bundle are bind-mounted read-only at /work/repo,
# /work/shared/data and /work/bundle; every mount is undone on exit (also on Ctrl-C), and mounts a
# killed run left behind are undone before anything else. Runs as root (chroot, mount).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

say() { printf '\033[1mmatrix %s:\033[0m %s\n' "${LEG:-?}" "$*"; }
die() { say "$*" >&2; exit 2; }

LEG=${1:-}
shift || true
case "$LEG" in
  3.40) SUITE=trixie ;;
  3.44) SUITE=sid ;;
  *) die "unknown leg '$LEG' (3.40: Debian trixie, 3.44: Debian sid; 3.22 is the host: scripts/test.sh)" ;;
esac
[ "$(id -u)" -eq 0 ] || die "needs root for chroot and mount (CI runs as root; here: sudo $0 $LEG ...)"

MIRROR=${REMOTECLIP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${REMOTECLIP_MATRIX_DIR:-$HOME/.cache/remoteclip-qgis-matrix}
ROOT=$CACHE/$SUITE
STAMPS=$ROOT/.remoteclip
VENV=/opt/remoteclip-venv
# xvfb, xauth: the tests that start the qgis program itself (tests/qgis_app.py); python3-pip: the plugin's
# installer runs pip on QGIS's own interpreter
APT_PACKAGES=(qgis python3-qgis qgis-providers python3-gdal gdal-bin python3-venv ca-certificates xvfb xauth python3-pip)
REQS=requirements/qgis-matrix.txt
CONSTRAINTS=requirements/constraints-qgis-$LEG.txt
DATA=${REMOTECLIP_DATA:-$(cd .. && pwd)/shared/data}
BUNDLE=${REMOTECLIP_TEST_BUNDLE:-}
mkdir -p "$CACHE"

# One run per chroot at a time (two worktrees may share the cache).
exec 9>"$CACHE/$SUITE.lock"
flock 9

# ------------------------------------------------------------------------------------ mounts
mounts_under_root() {
  # deepest first; /proc/mounts escapes spaces, and our paths have none
  awk -v r="$ROOT" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/mounts | sort -r
}
unmount_all() {
  local m
  for m in $(mounts_under_root); do
    umount "$m" 2>/dev/null || umount -l "$m"
  done
  if [ -n "$(mounts_under_root)" ]; then
    echo "matrix $LEG: could not unmount: $(mounts_under_root | tr '\n' ' ')" >&2
    return 1
  fi
}
child=""
trap 'unmount_all' EXIT
# Ctrl-C or a kill stops what runs in the chroot first, so that the mounts can go
trap '[ -z "$child" ] || { kill -TERM "$child" 2>/dev/null; wait "$child"; }; exit 130' INT TERM
unmount_all   # left behind by a run that was killed

bind() {  # bind SRC DEST [ro]
  mkdir -p "$ROOT$2"
  mount --bind "$1" "$ROOT$2"
  mount --make-private "$ROOT$2"   # nothing mounted under it shows up at SRC on the host
  [ "${3:-}" != ro ] || mount -o remount,bind,ro "$ROOT$2"
}

in_chroot() {  # in_chroot CMD...: run CMD in the chroot with a clean environment (exec: the pid is CMD's)
  exec_=""
  [ "${1:-}" != --exec ] || { exec_=exec; shift; }
  $exec_ chroot "$ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    DEBIAN_FRONTEND=noninteractive PIP_CERT=/etc/ssl/certs/remoteclip-host-ca.crt \
    PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 "$@"
}

fresh_root() {
  # A half-made chroot from an interrupted debootstrap is started again. Never through a mount:
  # unmount_all has run, and rm stays on this file system.
  [ -z "$(mounts_under_root)" ] || die "mounts remain under $ROOT; not removing it"
  rm -rf --one-file-system "$ROOT"
}

# ------------------------------------------------------------------------------------ stages
t_start=$(date +%s)
if [ ! -f "$STAMPS/base" ]; then
  command -v debootstrap >/dev/null || {
    say "installing debootstrap from Debian"
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap
  }
  fresh_root
  say "debootstrap $SUITE from $MIRROR into $ROOT"
  t=$(date +%s)
  debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" >"$CACHE/$SUITE.debootstrap.log" 2>&1 || {
    tail -20 "$CACHE/$SUITE.debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/$SUITE.debootstrap.log)"; }
  # no services start inside the chroot; dpkg skips fsync (a throw-away chroot: minutes saved)
  printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d" && chmod +x "$ROOT/usr/sbin/policy-rc.d"
  echo force-unsafe-io >"$ROOT/etc/dpkg/dpkg.cfg.d/remoteclip-unsafe-io"
  # sid's Release file is valid for a week; a registry mirror that lags behind (as the one CI and
  # this machine use) serves an expired one. The signature is still checked.
  echo 'Acquire::Check-Valid-Until "false";' >"$ROOT/etc/apt/apt.conf.d/99remoteclip-valid-until"
  mkdir -p "$STAMPS" && touch "$STAMPS/base"
  say "debootstrap done in $(( $(date +%s) - t )) s"
fi

# The chroot is its own private mount, so that what is mounted inside never propagates to the host
# (where / is a shared mount, as under systemd).
mount --bind "$ROOT" "$ROOT"
mount --make-private "$ROOT"
mkdir -p "$ROOT/proc" "$ROOT/dev"
mount -t proc proc "$ROOT/proc"
bind /dev /dev
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
cp -L "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$ROOT/etc/ssl/certs/remoteclip-host-ca.crt" 2>/dev/null \
  || { mkdir -p "$ROOT/etc/ssl/certs"; cp -L /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/remoteclip-host-ca.crt"; }
mkdir -p "$REPO/.qgis-settings"   # git-ignored; pytest-qgis keeps QGIS's profile there
bind "$REPO" /work/repo ro
mount -t tmpfs tmpfs "$ROOT/work/repo/.qgis-settings"   # writable over the read-only repository
[ -d "$DATA" ] && bind "$DATA" /work/shared/data ro
if [ -n "$BUNDLE" ]; then
  [ -f "$BUNDLE/manifest.json" ] || die "REMOTECLIP_TEST_BUNDLE=$BUNDLE is not a model bundle"
  bind "$BUNDLE" /work/bundle ro
fi

apt_want=$(echo "${APT_PACKAGES[*]}" | sha256sum | cut -c1-16)
if [ ! -f "$STAMPS/apt-$apt_want" ]; then
  say "installing from Debian $SUITE: ${APT_PACKAGES[*]}"
  t=$(date +%s)
  in_chroot apt-get update -q >"$CACHE/$SUITE.apt.log" 2>&1 || {
    tail -20 "$CACHE/$SUITE.apt.log" >&2; die "apt-get update failed (log: $CACHE/$SUITE.apt.log)"; }
  in_chroot apt-get install -y -q --no-install-recommends "${APT_PACKAGES[@]}" >>"$CACHE/$SUITE.apt.log" 2>&1 || {
    tail -20 "$CACHE/$SUITE.apt.log" >&2; die "apt-get install failed (log: $CACHE/$SUITE.apt.log)"; }
  in_chroot apt-get clean
  rm -f "$STAMPS"/apt-* "$STAMPS"/venv-*
  touch "$STAMPS/apt-$apt_want"
  say "apt done in $(( $(date +%s) - t )) s"
fi

qgis_version=$(in_chroot dpkg-query -W -f='${Version}' qgis)
case "$qgis_version" in
  "$LEG".*) ;;
  *) die "Debian $SUITE now serves QGIS $qgis_version, not $LEG.x: update the legs in scripts/qgis_matrix.sh and scripts/test.sh" ;;
esac

[ -f "$CONSTRAINTS" ] || die "$CONSTRAINTS is missing (write it from: $0 $LEG --freeze)"
venv_want=$( (cat "$REQS" "$CONSTRAINTS"; echo "$apt_want") | sha256sum | cut -c1-16)
if [ ! -f "$STAMPS/venv-$venv_want" ]; then
  say "making $VENV with $(in_chroot python3 --version) and installing $REQS"
  t=$(date +%s)
  rm -rf "$ROOT$VENV"
  in_chroot python3 -m venv --system-site-packages "$VENV"
  # Debian's numpy is the one QGIS and GDAL are built against: pip must keep it.
  in_chroot /bin/sh -c "python3 -c 'import numpy; print(\"numpy==\" + numpy.__version__)' > /tmp/numpy-debian.txt"
  in_chroot "$VENV/bin/python" -m pip install -q -c /tmp/numpy-debian.txt -c "/work/repo/$CONSTRAINTS" \
    -r "/work/repo/$REQS"
  rm -f "$STAMPS"/venv-*
  touch "$STAMPS/venv-$venv_want"
  say "venv done in $(( $(date +%s) - t )) s"
fi
say "chroot ready in $(( $(date +%s) - t_start )) s: QGIS $qgis_version, $(in_chroot python3 --version)"

if [ "${1:-}" = --freeze ]; then
  in_chroot "$VENV/bin/python" -m pip freeze --path "$(in_chroot "$VENV/bin/python" -c \
    'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  exit 0
fi

# ------------------------------------------------------------------------------------ tests
# --run CMD...: any command in the repository with the leg's venv first on PATH (debugging).
[ "${1:-}" != --run ] || { shift; set -- /bin/sh -c 'exec "$@"' sh "$@"; }
[ "${1:-}" = /bin/sh ] || set -- "$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
in_chroot --exec /usr/bin/env CI="${CI:-}" QT_QPA_PLATFORM=offscreen REMOTECLIP_DATA=/work/shared/data \
  ${BUNDLE:+REMOTECLIP_TEST_BUNDLE=/work/bundle} PATH="$VENV/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  /bin/sh -c 'cd /work/repo && exec "$@"' sh "$@" &
child=$!
wait "$child"
