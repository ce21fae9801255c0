"""VM console broker: short-lived tokens and a WebSocket relay to libvirt VNC consoles."""

from pathlib import Path as _Path


def _version() -> str:
    """The version of the code that runs: a checkout's pyproject.toml (a package installed
    elsewhere in the environment may be older), else the installed distribution's."""
    pyproject = _Path(__file__).resolve().parents[1] / "pyproject.toml"
    if pyproject.is_file():
        import tomllib

        try:
            project = tomllib.loads(pyproject.read_text())["project"]
            if project.get("name") == "vm-console-broker":
                return str(project["version"])
        except (OSError, ValueError, KeyError):
            pass
    from importlib import metadata

    try:
        return metadata.version("vm-console-broker")
    except metadata.PackageNotFoundError:
        return "unknown"


__version__ = _version()
