"""Schemathesis hooks for tests/integration/test_api_fuzz.py (loaded through SCHEMATHESIS_HOOKS).

Random identifiers almost never name a domain, so the calls behind them would only ever be
fuzzed into 404s. Here a generated `ident` is swapped, by a hash of its value (so a run with
a fixed seed stays the same run), for one of the real domains in BROKER_FUZZ_DOMAINS, or
kept: both the domains' answers and the refusals of random text get fuzzed.
"""

from __future__ import annotations

import os
import zlib
from typing import Any

import schemathesis

DOMAINS = [name for name in os.environ.get("BROKER_FUZZ_DOMAINS", "").split(",") if name]


@schemathesis.hook
def map_path_parameters(ctx: schemathesis.HookContext, path_parameters: dict[str, Any] | None) -> Any:
    if not path_parameters or "ident" not in path_parameters or not DOMAINS:
        return path_parameters
    pick = zlib.crc32(repr(path_parameters["ident"]).encode()) % (len(DOMAINS) + 1)
    if pick < len(DOMAINS):
        return {**path_parameters, "ident": DOMAINS[pick]}
    return path_parameters
