#!/usr/bin/env bash
# Builds the frozen agent with PyInstaller: dist/trackssl-agent (single file) and
# dist/trackssl-agent-folder/ (folder build), repeatably (fixed hash seed and timestamps),
# from a fresh clone with git and a Python 3.11+ whose shared library is installed
# (PyInstaller needs it: on Debian and Ubuntu the libpython3.X package beside python3).
#
# The build runs in its own virtual environment (.build-venv/, gitignored) holding exactly
# the pinned runtime and build dependencies of build/requirements-build.txt, checked against
# their hashes; no test tools. It is made on first use and again whenever the lock file or
# the interpreter changes.
# Usage: scripts/build-binary.sh   (PYTHON=/path/to/python picks the interpreter the build
#                                   environment is made from; BUILD_VENV=dir moves it)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${BUILD_VENV:-.build-venv}
LOCK=build/requirements-build.txt

if [ -x "$VENV/Scripts/python.exe" ]; then VPY=$VENV/Scripts/python.exe; else VPY=$VENV/bin/python; fi
# What the environment was made from: a new lock or another interpreter means a new one.
stamp=$("$PYTHON" -c 'import hashlib, pathlib, sys
print(sys.base_prefix, sys.version.split()[0], hashlib.sha256(pathlib.Path(sys.argv[1]).read_bytes()).hexdigest())' "$LOCK")
if [ ! -x "$VPY" ] || [ "$(cat "$VENV/.lock-stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "build-binary: making the build environment $VENV from $LOCK"
  "$PYTHON" -m venv --clear "$VENV"
  if [ -x "$VENV/Scripts/python.exe" ]; then VPY=$VENV/Scripts/python.exe; else VPY=$VENV/bin/python; fi
  # --only-binary: an sdist would be built with whatever build tools the index serves today.
  # With dependencies resolved (no --no-deps), pip also refuses a lock that misses one.
  "$VPY" -m pip install --quiet --disable-pip-version-check --require-hashes \
    --only-binary :all: -r "$LOCK"
  echo "$stamp" > "$VENV/.lock-stamp"
fi
# The agent itself, without dependencies (they are pinned above) and without an isolated
# build environment (that would fetch an unpinned setuptools): the lock's setuptools builds it.
# setuptools packs whatever its build dir holds, a module since moved or deleted included:
# start that dir empty.
rm -rf .setuptools-build
"$VPY" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation \
  --force-reinstall .

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
"$VPY" -m PyInstaller --noconfirm --clean --log-level WARN \
  --distpath dist --workpath dist/.work pyinstaller.spec
rm -rf dist/.work

ls -l dist/trackssl-agent dist/trackssl-agent-folder/trackssl-agent
dist/trackssl-agent --version
dist/trackssl-agent-folder/trackssl-agent --version
