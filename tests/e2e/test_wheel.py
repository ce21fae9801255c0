"""The installable package as a user meets it: contrib/build-wheel.sh builds the wheel and
the sdist, the wheel goes into a fresh virtualenv outside the checkout, and `broker serve`
from there, run from a directory with no checkout, shows a VM's screen in Chromium."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import libvirt
import pytest

from support.processes import start_broker
from support.wait import wait_until

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]

DRAWN = """() => {
    const canvas = document.querySelector('#screen canvas');
    if (!canvas || !canvas.width) return 0;
    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    const colours = new Set();
    for (let i = 0; i < data.length; i += 4 * 97) colours.add(data[i] << 16 | data[i + 1] << 8 | data[i + 2]);
    return colours.size;
}"""


def run(*argv: str | Path, timeout: float = 300, **kwargs: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{argv}: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_the_wheel_installed_elsewhere_serves_the_console_page(
    console_vm: libvirt.virDomain, page, tmp_path: Path, artifacts: Path
) -> None:
    took: dict[str, float] = {}
    started = time.monotonic()

    def lap(name: str) -> None:
        took[name] = round(time.monotonic() - started - sum(took.values()), 1)

    script = REPO / "contrib" / "build-wheel.sh"
    built = run("bash", script, tmp_path / "dist", env={**os.environ, "PYTHON": sys.executable})
    wheel, sdist = (Path(line) for line in built.stdout.split())
    assert wheel.name == f"vm_console_broker-{VERSION}-py3-none-any.whl" and sdist.is_file()
    names = zipfile.ZipFile(wheel).namelist()
    for license_text in ("@novnc/novnc/LICENSE.txt", "@novnc/novnc/docs/LICENSE.MPL-2.0", "@xterm/xterm/LICENSE"):
        assert f"broker/webroot/licenses/{license_text}" in names
    assert not (REPO / "broker" / "webroot").exists(), "build-wheel.sh left broker/webroot/ in the checkout"
    lap("build")

    # A virtualenv of its own (no system site-packages: a missing dependency must show).
    # libvirt-python is pinned to the version these tests run on, so that pip takes the
    # wheel it built for it before from its cache instead of compiling it again.
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(f"libvirt-python=={metadata.version('libvirt-python')}\n")
    run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", "-c", constraints, wheel)
    lap("install")

    elsewhere = tmp_path / "elsewhere"  # no checkout here or above
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "PYTHON"))}
    version = run(venv / "bin" / "broker", "--version", cwd=elsewhere, env=env)
    assert version.stdout.strip() == f"broker {VERSION}"
    where = run(
        venv / "bin" / "python",
        "-c",
        "import json, broker.web.assets as a; print(json.dumps([a.__file__, str(a.web_root())]))",
        cwd=elsewhere,
        env=env,
    )
    module, root = (Path(p) for p in json.loads(where.stdout))
    assert module.is_relative_to(venv) and root == module.parents[1] / "webroot", (module, root)

    broker = start_broker(tmp_path / "state", command=(str(venv / "bin" / "broker"),), cwd=elsewhere)
    try:
        minted = broker.cli("token", console_vm.name(), "--json")
        assert minted.returncode == 0, minted.stderr
        link = json.loads(minted.stdout)
        lap("serve")

        page.goto(link["console_url"])
        page.wait_for_selector("body[data-state='connected']", timeout=20_000)
        wait_until(lambda: page.evaluate(DRAWN) > 1, 15, "the VM's screen on the canvas", interval=0.1)
        page.screenshot(path=str(artifacts / "wheel-console.png"))
        assert not page.js_errors
        # Its bundles came out of the installed package.
        html = page.content()
        bundles = re.findall(r'(?:href|src)="(?:\.\./\.\./)?static/([^"]+)"', html)  # served at /console
        assert len(bundles) == 3 and all((root / "static" / name).is_file() for name in bundles), bundles
        lap("page")
    finally:
        broker.stop()
    print(f"wheel test timings (s): {took}, total {sum(took.values()):.1f}")
