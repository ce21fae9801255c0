#!/usr/bin/env bash
# setup.sh - install everything vm-console-broker needs to run and to be tested.
# Idempotent: a second run installs nothing and takes a second or two.
#
# Usage:
#   contrib/setup.sh            (as root; also called by contrib/demo.sh and contrib/test.sh)
#
# What it does, each step only when needed:
#   1. apt packages: libvirt + QEMU + tini (always checked); gcc, python3-dev, python3-venv
#      when `python3 -m venv` or Python.h is unavailable for the python3 on PATH (gcc also when
#      no C compiler exists: libvirt-python is built from source); nodejs + npm when node/npm
#      are missing; plus $BROKER_SETUP_EXTRA_APT. One `apt-get update` first, only if something
#      is missing.
#   2. the virtualenv .venv in the repository root (python3 -m venv)
#   3. pip install -e '.[test]' into it, when pyproject.toml changed since the last install
#      (its sha256 is kept in .venv/.broker-setup-pyproject.sha256)
#   4. npm ci in web/, if web/package.json exists, when web/package-lock.json changed since
#      the last run (stamp in web/node_modules/.broker-setup-lock.sha256)
#   5. the console pages built into web/dist/ (npm run build: web/build.mjs), every run
#      (about a second; reported as new only when the build changed)
#
# Environment:
#   BROKER_SETUP_EXTRA_APT   more apt packages, space- or comma-separated
#                            (e.g. "chromium nginx" for the end-to-end tests)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
LIBVIRT_PKGS=(libvirt-daemon libvirt-daemon-driver-qemu qemu-system-x86 libvirt-clients
              libvirt-dev pkg-config tini)

INSTALLED=()   # what this run installed or created
PRESENT=()     # what was already there
T0=$(date +%s.%N)

log() { printf '[setup] %s\n' "$*"; }
die() { log "ERROR: $*" >&2; exit 1; }
installed() { INSTALLED+=("$1"); log "installed $1${2:+ ($2)}"; }
present() { PRESENT+=("$1"); log "$1 already present${2:+ ($2)}"; }
sha() { sha256sum "$1" | cut -d' ' -f1; }
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# -- 1. apt packages -----------------------------------------------------------------------

venv_works() {
  # A working interpreter in .venv is proof enough; otherwise make a throw-away venv
  # (with pip: Debian's python3 without python3-venv fails only at ensurepip).
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c '' 2>/dev/null; then return 0; fi
  python3 -m venv "$TMP/venv-probe" >/dev/null 2>&1
}
python_h_exists() {
  python3 -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null
}

apt_wanted() {
  WANT=("${LIBVIRT_PKGS[@]}")
  command -v python3 >/dev/null || WANT+=(python3)
  if ! command -v python3 >/dev/null || ! venv_works || ! python_h_exists; then
    WANT+=(gcc python3-dev python3-venv)
  elif ! command -v cc >/dev/null && ! command -v gcc >/dev/null; then
    WANT+=(gcc)
  fi
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    WANT+=(nodejs npm)
  fi
  local raw="${BROKER_SETUP_EXTRA_APT:-}" extra
  read -r -a extra <<<"${raw//,/ }"
  WANT+=("${extra[@]}")
}

install_apt() {
  local missing=() have=() p
  apt_wanted
  mapfile -t WANT < <(printf '%s\n' "${WANT[@]}" | awk 'NF && !seen[$0]++')   # dedupe
  for p in "${WANT[@]}"; do
    if pkg_installed "$p"; then have+=("$p"); else missing+=("$p"); fi
  done
  if [ ${#have[@]} -gt 0 ]; then present "apt: ${have[*]}"; fi
  [ ${#missing[@]} -gt 0 ] || return 0
  [ "$(id -u)" = 0 ] || die "must run as root to install: ${missing[*]}"
  local t0 log="$TMP/apt.log" lock=(-o DPkg::Lock::Timeout=600)   # wait for other apt runs
  t0=$(date +%s)
  export DEBIAN_FRONTEND=noninteractive
  log "apt-get update, then installing ${missing[*]}"
  apt-get "${lock[@]}" update -qq >"$log" 2>&1 \
    || { tail -20 "$log" >&2; die "apt-get update failed"; }
  # Packages such as prometheus, nginx and libvirt-daemon start a system service when
  # installed; the tests start their own, so nothing may be left running: a policy-rc.d
  # that refuses every start, for the length of the install (unless one is there already).
  local policy=/usr/sbin/policy-rc.d own_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# vm-console-broker setup.sh: no service starts during its apt-get install\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    own_policy=1
  fi
  apt-get "${lock[@]}" install -y -qq --no-install-recommends "${missing[@]}" >>"$log" 2>&1 \
    || { [ -z "$own_policy" ] || rm -f "$policy"; tail -20 "$log" >&2; die "apt-get install ${missing[*]} failed"; }
  [ -z "$own_policy" ] || rm -f "$policy"
  installed "apt: ${missing[*]}" "$(( $(date +%s) - t0 )) s, no service started"
}

check_python() {
  command -v python3 >/dev/null || die "no python3 on PATH"
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$(command -v python3) is Python $(python3 -V 2>&1); vm-console-broker needs >= 3.11"
  # apt only helps /usr/bin/python3; another python3 (pyenv, ...) must bring its own.
  venv_works || die "python3 -m venv does not work for $(command -v python3)"
  python_h_exists || die "no Python.h for $(command -v python3) (needed to build libvirt-python)"
}

# -- 2. virtualenv -------------------------------------------------------------------------

make_venv() {
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c '' 2>/dev/null; then
    present ".venv" "$("$VENV/bin/python" -V 2>&1)"
    return
  fi
  if [ -e "$VENV" ]; then
    log ".venv exists but its python does not run: recreating it"
    rm -rf "$VENV"
  fi
  python3 -m venv "$VENV"
  installed ".venv" "$(command -v python3), $("$VENV/bin/python" -V 2>&1)"
}

# -- 3. the package and its test dependencies ----------------------------------------------

pip_install() {
  [ -f "$ROOT/pyproject.toml" ] || die "no pyproject.toml in $ROOT"
  local stamp="$VENV/.broker-setup-pyproject.sha256" sum
  sum=$(sha "$ROOT/pyproject.toml")
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ] && [ -x "$VENV/bin/broker" ]; then
    present "python packages" "pyproject.toml unchanged"
    return
  fi
  local t0 log="$VENV/.broker-setup-pip.log"
  t0=$(date +%s)
  log "pip install -e '.[test]' (pyproject.toml new or changed; log $log)"
  (cd "$ROOT" && "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]') >"$log" 2>&1 \
    || { tail -30 "$log" >&2; die "pip install -e '.[test]' failed"; }
  echo "$sum" >"$stamp"
  installed "python packages" "pip install -e '.[test]', $(( $(date +%s) - t0 )) s"
}

# -- 4. the web client's node modules ------------------------------------------------------

npm_install() {
  local web="$ROOT/web"
  [ -f "$web/package.json" ] || return 0
  local lockfile="$web/package-lock.json" stamp="$web/node_modules/.broker-setup-lock.sha256" sum cmd
  if [ -f "$lockfile" ]; then
    sum=$(sha "$lockfile"); cmd=(npm ci)
  else
    sum=$(sha "$web/package.json"); cmd=(npm install)
    log "web/package-lock.json missing: using npm install (commit the lock file it writes)"
  fi
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ]; then
    present "web/node_modules" "lock file unchanged"
    return
  fi
  local t0 log="$TMP/npm.log"
  t0=$(date +%s)
  log "${cmd[*]} in web/"
  (cd "$web" && "${cmd[@]}" --no-audit --no-fund --loglevel=error) >"$log" 2>&1 \
    || { tail -30 "$log" >&2; die "${cmd[*]} in web/ failed"; }
  if [ -f "$lockfile" ]; then sum=$(sha "$lockfile"); fi   # npm install may have written it
  mkdir -p "$web/node_modules"
  echo "$sum" >"$stamp"
  installed "web/node_modules" "${cmd[*]}, $(( $(date +%s) - t0 )) s"
}

# -- 5. the console pages' build ----------------------------------------------------------

build_pages() {
  local web="$ROOT/web" manifest="$ROOT/web/dist/manifest.json" before="" t0 log="$TMP/build.log"
  [ -f "$web/build.mjs" ] || return 0
  [ -f "$manifest" ] && before=$(sha "$manifest")
  t0=$(date +%s.%N)
  (cd "$web" && npm run --silent build) >"$log" 2>&1 \
    || { tail -30 "$log" >&2; die "npm run build in web/ failed"; }
  local took
  took=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  if [ "$before" = "$(sha "$manifest")" ]; then
    present "web/dist" "the console pages' build is current; npm run build, ${took} s"
  else
    installed "web/dist" "npm run build: the console pages bundled, ${took} s"
  fi
}

install_apt
check_python
make_venv
pip_install
npm_install
build_pages

elapsed=$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
join() {
  if [ $# -eq 0 ]; then echo nothing; return; fi
  local out="$1" item; shift
  for item in "$@"; do out+="; $item"; done
  echo "$out"
}
log "done in ${elapsed} s. installed: $(join "${INSTALLED[@]}") | already present: $(join "${PRESENT[@]}")"
