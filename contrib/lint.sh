#!/usr/bin/env bash
# lint.sh - ruff (lint and format check) over broker/, tests/ and bench/, and mypy (strict,
# on broker/), from the virtualenv contrib/setup.sh makes. Settings live in pyproject.toml.
#
# Usage (from anywhere, after contrib/setup.sh): bash contrib/lint.sh
# To fix what can be fixed: .venv/bin/ruff check --fix . && .venv/bin/ruff format .
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
status=0
echo "[lint] ruff check"
.venv/bin/ruff check broker tests bench || status=1
echo "[lint] ruff format --check"
.venv/bin/ruff format --check broker tests bench || status=1
echo "[lint] mypy (strict on broker/)"
.venv/bin/mypy || status=1
exit "$status"
