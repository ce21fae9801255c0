"""VM console broker: short-lived tokens and a WebSocket relay to libvirt VNC consoles."""

__version__ = "0.1.0"
