#!/usr/bin/env bash
# Install what the tests need, then run them all (unit, AppTest, browser).
# Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
    echo "Installing Debian's chromium for the browser tests ..."
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get install -y -q chromium >/dev/null 2>&1 || {
        $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium >/dev/null; }
fi
python -m pip install -q -c constraints.txt -r requirements-dev.txt
# Oracles without their dependency resolution: some would replace the pinned torch.
python -m pip install -q --no-deps -c constraints.txt -r requirements-oracles.txt
python -m ruff check .
# -n auto: one worker per core (pytest-xdist); each worker that runs browser tests starts its own
# server and Chromium (tests/browser/conftest.py). pytest-xdist 3.8 cannot group tests under
# pytest 9 (its loadgroup renames node ids through an attribute pytest 9 no longer reads).
python -m pytest -n auto "$@"
