"""After an upgrade, the header deadline waits on the transport alone (broker/httpguard.py)."""

from __future__ import annotations

from dataclasses import dataclass

from broker.httpguard import _close_unless_handshaken


@dataclass
class Upgraded:
    handshake_complete: bool


@dataclass
class Transport:
    protocol: object
    closed: bool = False

    def is_closing(self) -> bool:
        return self.closed

    def get_protocol(self) -> object:
        return self.protocol

    def close(self) -> None:
        self.closed = True


def test_a_websocket_still_without_its_handshake_is_closed() -> None:
    transport = Transport(Upgraded(handshake_complete=False))
    _close_unless_handshaken(transport)
    assert transport.closed


def test_a_handshaken_websocket_is_left_alone() -> None:
    transport = Transport(Upgraded(handshake_complete=True))
    _close_unless_handshaken(transport)
    assert not transport.closed
