"""Peer benchmark of the broker against websockify and a direct connection; see docs/benchmarks.md."""
