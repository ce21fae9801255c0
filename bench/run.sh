#!/usr/bin/env bash
# The benchmark in one command: bash bench/run.sh [--quick] [--out DIR] [--only down,up,...] [--no-profile]
# The click-to-pixels benchmark: bash bench/run.sh --only pixels [--reps N] [--links loopback,cdp,link] [--out DIR]
# (it runs with the project's Python, $BENCH_PYTHON or .venv/bin/python, which has Playwright and
# libvirt-python; Debian's `novnc` package must be installed; websockify comes from bench/.venv).
# Builds the C backend, client and plain relay into bench/build/ and the bench venv bench/.venv (websockify 0.13.0 and
# the plotting/profiling tools, from PyPI; never the project's .venv), then runs `python -m bench`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=$here/.venv
packages=(websockify==0.13.0 numpy==2.4.6 matplotlib==3.11.2 py-spy==0.4.3)
if ! "$venv/bin/python" -c 'import websockify, numpy, matplotlib' 2>/dev/null || [ ! -x "$venv/bin/py-spy" ]; then
    echo "bench: installing ${packages[*]} into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "${packages[@]}"
fi
if [ "${1:-}" = "--only" ] && [ "${2:-}" = "pixels" ]; then
    shift 2
    if [ ! -e /usr/share/novnc/vnc_lite.html ]; then
        echo "bench: installing Debian's novnc (vnc_lite.html, the page compared against)" >&2
        apt-get install -y -q --no-install-recommends novnc >&2
    fi
    python=${BENCH_PYTHON:-$here/../.venv/bin/python}
    cd "$here/.." && exec "$python" -m bench.pixels "$@"
fi
mkdir -p "$here/build"
for prog in backend client relay; do
    if [ ! -x "$here/build/$prog" ] || [ "$here/$prog.c" -nt "$here/build/$prog" ]; then
        gcc -O2 -Wall -pthread -o "$here/build/$prog" "$here/$prog.c"
    fi
done
cd "$here/.." && exec "$venv/bin/python" -m bench "$@"
