"""A slow network link in user space, for the click-to-pixels benchmark (bench/pixels.py).

    python -m bench.linkemu --rtt-ms 100 --mbit 10 LISTEN=TARGET [LISTEN=TARGET ...]

Each LISTEN=TARGET pair (host:port each) is a TCP forwarder behind its own emulated link: every
byte crosses a bottleneck of --mbit per direction, shared by all connections of that pair
(as a real access link is), then waits half the round trip; a new connection's first byte from
the client arrives no earlier than one round trip (the TCP handshake) and a half after it
connected. Data moves in segments of at most SEGMENT bytes, in order.

Why not `tc netem`: this kernel has no netem qdisc. Why not only Chromium's own emulation
(CDP Network.emulateNetworkConditions): it delays HTTP requests and a WebSocket's opening
handshake, but not the messages on an open WebSocket (measured; see docs/benchmarks.md), and
VNC's set-up is several round trips of messages. What this does not model: TCP slow start,
receive windows, loss.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import signal
import sys

SEGMENT = 4096


class Link:
    """One direction of a bottleneck: when it is free again, its rate, its one-way delay."""

    def __init__(self, bytes_per_s: float, delay_s: float) -> None:
        self.rate, self.delay, self.free_at = bytes_per_s, delay_s, 0.0

    def arrival(self, size: int, now: float) -> float:
        self.free_at = max(now, self.free_at) + size / self.rate
        return self.free_at + self.delay


class Pipe:
    """Bytes read from one socket, written to the other at their arrival times, in order."""

    def __init__(self, link: Link, writer: asyncio.StreamWriter, not_before: float = 0.0) -> None:
        self.link, self.writer, self.not_before = link, writer, not_before
        self.queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.ready = asyncio.Event()

    async def read_from(self, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await reader.read(65536)
            if not data:
                self.queue.append((max(self.link.free_at + self.link.delay, self.not_before), None))
                self.ready.set()
                return
            for start in range(0, len(data), SEGMENT):
                piece = data[start : start + SEGMENT]
                self.queue.append((max(self.link.arrival(len(piece), loop.time()), self.not_before), piece))
            self.ready.set()

    async def write_out(self) -> None:
        """Everything due by the time this wakes goes out at once: a late wake-up (a busy
        machine) delays the segments by its lateness once, instead of adding up per segment."""
        loop = asyncio.get_running_loop()
        while True:
            while not self.queue:
                self.ready.clear()
                await self.ready.wait()
            wait = self.queue[0][0] - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            now = loop.time()
            while self.queue and self.queue[0][0] <= now:
                _, piece = self.queue.popleft()
                if piece is None:
                    if self.writer.can_write_eof():
                        self.writer.write_eof()
                    return
                self.writer.write(piece)
            await self.writer.drain()


async def forward(listen: str, target: str, rtt: float, bytes_per_s: float) -> asyncio.Server:
    up, down = Link(bytes_per_s, rtt / 2), Link(bytes_per_s, rtt / 2)
    target_host, target_port = target.rsplit(":", 1)

    async def connection(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        accepted = asyncio.get_running_loop().time()
        try:
            server_r, server_w = await asyncio.open_connection(target_host, int(target_port))
        except OSError:
            client_w.close()
            return
        to_server = Pipe(up, server_w, not_before=accepted + rtt + rtt / 2)
        to_client = Pipe(down, client_w)
        tasks = [
            asyncio.create_task(coro)
            for coro in (
                to_server.read_from(client_r),
                to_server.write_out(),
                to_client.read_from(server_r),
                to_client.write_out(),
            )
        ]
        try:
            await asyncio.gather(*tasks)
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # a connection ends, or the emulator stops: nothing to report
        finally:
            for task in tasks:
                task.cancel()
            for writer in (client_w, server_w):
                writer.close()

    host, port = listen.rsplit(":", 1)
    return await asyncio.start_server(connection, host, int(port), reuse_address=True)


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.linkemu", description=__doc__)
    parser.add_argument("--rtt-ms", type=float, default=100.0)
    parser.add_argument("--mbit", type=float, default=10.0)
    parser.add_argument("pairs", nargs="+", metavar="LISTEN=TARGET")
    args = parser.parse_args()
    try:  # the link is the network: other work on the machine should not slow it (as root)
        os.nice(-10)
    except OSError:
        pass
    servers = []
    for pair in args.pairs:
        listen, target = pair.split("=", 1)
        servers.append(await forward(listen, target, args.rtt_ms / 1000, args.mbit * 1e6 / 8))
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
