#!/usr/bin/env bash
# test.sh - the one command that runs the whole vm-console-broker test suite.
#
# Usage (as root, from anywhere):
#   contrib/test.sh [pytest args...]      e.g. contrib/test.sh -k relay -x
#
# Steps: contrib/setup.sh (installs what is missing), contrib/libvirt-up.sh up (a real
# libvirtd + QEMU), then `.venv/bin/python -m pytest tests -p no:cacheprovider -ra ARGS`.
# Exits with pytest's status, except that "no tests collected" (pytest status 5) is a
# failure (status 1). libvirtd is left running for the next run (the tests clean up their
# own domains).
#
# Environment:
#   BROKER_SETUP_EXTRA_APT=...      more apt packages for setup.sh (e.g. "chromium nginx")
#   BROKER_TEST_STOP_LIBVIRT=1      run `contrib/libvirt-up.sh down` afterwards
#   BROKER_LIBVIRT_STATE=...        passed on to libvirt-up.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

log() { printf '[test] %s\n' "$*"; }

# The end-to-end tests drive Debian's Chromium through nginx (only added when missing, so an
# nginx flavour the operator already has is kept).
extra="${BROKER_SETUP_EXTRA_APT:-}"
[ -x /usr/bin/chromium ] || extra+=" chromium"
command -v nginx >/dev/null || extra+=" nginx-light"
# The operations tests scrape a test broker with a real Prometheus (loading contrib's alert
# rules) and rotate its audit trail with logrotate and contrib's file.
command -v prometheus >/dev/null || extra+=" prometheus"
command -v logrotate >/dev/null || extra+=" logrotate"
# The fleet tests (tests/fleet) make network namespaces and certificates.
command -v ip >/dev/null || extra+=" iproute2"
command -v openssl >/dev/null || extra+=" openssl"
BROKER_SETUP_EXTRA_APT="$extra" bash contrib/setup.sh
bash contrib/libvirt-up.sh up

log "running: .venv/bin/python -m pytest tests -p no:cacheprovider -ra $*"
t0=$SECONDS
status=0
.venv/bin/python -m pytest tests -p no:cacheprovider -ra "$@" || status=$?
log "pytest exited with status $status after $((SECONDS - t0)) s"

if [ "$status" -eq 5 ]; then
  log "FAILED: pytest collected no tests (status 5); counting that as a failure" >&2
  status=1
fi

if [ "${BROKER_TEST_STOP_LIBVIRT:-0}" = 1 ]; then
  bash contrib/libvirt-up.sh down || log "libvirt-up.sh down failed (ignored)"
else
  log "libvirtd left running (BROKER_TEST_STOP_LIBVIRT=1 stops it)"
fi
exit "$status"
