#!/usr/bin/env bash
# test-floors.sh - the unit tests on the oldest dependency versions pyproject.toml allows
# (contrib/floor-constraints.txt), in a virtualenv of their own (.venv-floor), so that a
# floor the code does not really meet fails here and not on a user's machine.
#
# Usage (after contrib/setup.sh, which brings python3-venv and libvirt-dev):
#   bash contrib/test-floors.sh [pytest args...]
# .ci/run calls it after the whole suite. Exits with pytest's status (5, no tests: 1).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
log() { printf '[floors] %s\n' "$*"; }

VENV="$ROOT/.venv-floor"
STAMP="$VENV/.constraints.sha256"
want=$(cat pyproject.toml contrib/floor-constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  log "making $VENV with the floor versions (contrib/floor-constraints.txt)"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    -c contrib/floor-constraints.txt -e . pytest hypothesis openapi-spec-validator >"$VENV/.pip.log" 2>&1 \
    || { tail -30 "$VENV/.pip.log" >&2; log "FAILED: pip install with the floor constraints"; exit 1; }
  echo "$want" >"$STAMP"
else
  log "$VENV already has the floor versions"
fi
log "versions: $("$VENV/bin/python" -m pip list --disable-pip-version-check 2>/dev/null \
  | grep -iE '^(libvirt-python|starlette|uvicorn|websockets|h11|httpx|cryptography|uvloop|prometheus[-_]client|pillow) ' | tr -s ' ' | tr '\n' ' ')"
status=0
"$VENV/bin/python" -m pytest tests/unit -p no:cacheprovider -q "$@" || status=$?
if [ "$status" -eq 5 ]; then
  log "FAILED: pytest collected no tests (status 5)" >&2
  status=1
fi
exit "$status"
