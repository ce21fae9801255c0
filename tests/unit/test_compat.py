"""The library internals the fast paths lean on (broker/server/compat.py): met here, and when one
is not, the broker says so once and still serves every console, through the generic relay."""

from __future__ import annotations

import os
from pathlib import Path

from websockets.sync.client import connect

from broker.server import compat
from support.processes import start_broker
from support.stream_server import GREETING, StreamServer, command

# Loaded by the broker's interpreter at start (PYTHONPATH): as if a uvicorn and an h11
# release had renamed something each of our protocols relies on.
RENAMED_INTERNALS = """
import broker.server.compat as c
c.REQUIREMENTS.append(c.Requirement("uvicorn", "uvicorn:Renamed.attribute", lambda: False, "splice"))
c.REQUIREMENTS.append(c.Requirement("h11", "h11:Renamed.attribute", lambda: False, "httpguard"))
"""


def test_this_installation_has_every_internal_the_broker_uses() -> None:
    assert [r.name for r in compat.missing()] == []


def test_a_check_sees_a_missing_attribute() -> None:
    assert not compat._has("uvicorn.protocols.http.h11_impl:H11Protocol.no_such_method")()
    assert not compat._assigns("uvicorn.protocols.http.h11_impl:H11Protocol.__init__", "no_such_attribute")()
    assert compat._assigns("uvicorn.protocols.http.h11_impl:H11Protocol.__init__", "cycle")()


def test_with_an_internal_missing_sessions_still_work_through_the_generic_relay(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(RENAMED_INTERNALS)
    server = StreamServer()
    broker = start_broker(
        tmp_path / "state",
        extra_env={
            "BROKER_CONNECT": "test:///default",
            "BROKER_STATIC_CONSOLES": f"desk={server.target}",
            "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]),
        },
    )
    try:
        url = broker.mint("desk")["websocket_url"]
        with connect(url, open_timeout=10) as ws:
            assert ws.recv(timeout=10) == GREETING
            ws.send(command(b"E", 5) + b"hello")
            assert ws.recv(timeout=10) == b"hello"
        log = broker.log()
        assert "missing uvicorn:Renamed.attribute; relaying every console through the generic ASGI relay" in log
        assert "missing h11:Renamed.attribute; serving HTTP with uvicorn's own protocol" in log
        assert "uvicorn 0." in log and "websockets 1" in log  # the versions installed, named
        assert "Traceback" not in log
    finally:
        broker.stop()
        server.close()
