#!/usr/bin/env bash
# build-wheel.sh - the installable package: a wheel and an sdist of vm-console-broker with
# its console pages built and inside (broker/webroot/: the bundles, templates and the
# license texts of the bundled noVNC and xterm.js).
#
# Usage:
#   contrib/build-wheel.sh [OUTDIR]        (default: dist/ in the repository root)
#
# Steps:
#   1. npm ci in web/, only when web/node_modules does not match the lock file (npm ls)
#   2. node web/build.mjs --outdir broker/webroot (a fresh build, not web/dist/)
#   3. $PYTHON -m build --outdir OUTDIR (PyPI's `build`, in the test extra: setup.sh
#      installs it), which packs broker/webroot/ as package data (pyproject.toml)
#   4. broker/webroot/ removed again: a checkout serves web/dist/ (broker/web/assets.py)
# Prints the paths of the wheel and the sdist, one a line, last.
#
# Environment:
#   PYTHON   the interpreter with `build` (default: .venv/bin/python, else python3)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUTDIR=$(realpath -m "${1:-$ROOT/dist}")
PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
WEBROOT="$ROOT/broker/webroot"

log() { printf '[build-wheel] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v node >/dev/null && command -v npm >/dev/null || die "node and npm are needed (contrib/setup.sh installs them)"
"$PYTHON" -c 'import build' 2>/dev/null \
  || die "$PYTHON has no \`build\` module: pip install build (or contrib/setup.sh, which installs the test extra)"

cd "$ROOT/web"
if npm ls --all >/dev/null 2>&1; then
  log "web/node_modules matches the lock file"
else
  log "npm ci in web/"
  npm ci --no-audit --no-fund --loglevel=error >&2
fi

trap 'rm -rf "$WEBROOT"' EXIT
rm -rf "$WEBROOT"
log "building the console pages into broker/webroot/"
node build.mjs --outdir "$WEBROOT" >&2

cd "$ROOT"
mkdir -p "$OUTDIR"
log "$PYTHON -m build --outdir $OUTDIR"
before=$(ls "$OUTDIR")
"$PYTHON" -m build --outdir "$OUTDIR" . >"$OUTDIR/.build.log" 2>&1 \
  || { tail -30 "$OUTDIR/.build.log" >&2; die "python -m build failed (log: $OUTDIR/.build.log)"; }
version=$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
wheel="$OUTDIR/vm_console_broker-$version-py3-none-any.whl"
sdist="$OUTDIR/vm_console_broker-$version.tar.gz"
[ -f "$wheel" ] && [ -f "$sdist" ] || die "python -m build made no $wheel and $sdist (made: $(comm -13 <(echo "$before") <(ls "$OUTDIR") | tr '\n' ' '))"
"$PYTHON" - "$wheel" <<'EOF' || die "the wheel lacks the console pages"
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
needed = ["broker/webroot/manifest.json", "broker/webroot/pages/console.html", "broker/webroot/licenses/@novnc/novnc/LICENSE.txt"]
missing = [n for n in needed if n not in names]
sys.exit(f"missing from the wheel: {missing}" if missing else 0)
EOF
log "done: $(du -h "$wheel" | cut -f1) wheel, $(du -h "$sdist" | cut -f1) sdist"
echo "$wheel"
echo "$sdist"
