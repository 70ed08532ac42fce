#!/usr/bin/env bash
# Builds the frozen agent with PyInstaller: dist/trackssl-agent (single file) and
# dist/trackssl-agent-folder/ (folder build), repeatably (fixed hash seed and timestamps).
# Usage: scripts/build-binary.sh   (PYTHON=/path/to/python to pick the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

# Fixed so that two builds of one commit hash the same: set iteration order and embedded
# timestamps are the two things that otherwise differ.
export PYTHONHASHSEED=0
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || true)
  # A tree without commits (or without git) gets a fixed date rather than "now".
  SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1767225600}
fi
export SOURCE_DATE_EPOCH

# PyInstaller's default work dir is ./build, which holds our packaging inputs: keep it apart.
"$PYTHON" -m PyInstaller --noconfirm --clean --log-level WARN \
  --distpath dist --workpath dist/.work pyinstaller.spec
rm -rf dist/.work

ls -l dist/trackssl-agent
dist/trackssl-agent --version
