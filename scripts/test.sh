#!/usr/bin/env bash
# The whole test suite from a fresh machine: servers (as root), a venv, lint, types, tests.
# It says first what it installs; `--plan` says only that and exits. Other arguments go to
# pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
servers=0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then servers=1; fi
pip_set=$(python3 -c 'import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = project["optional-dependencies"]
print(" ".join([*project["dependencies"], *extras["test"], *extras["build"]]))')
plan="into .venv with pip: pip, this clone (editable) and $pip_set"
if [ "$servers" = 1 ]; then
  plan="with apt-get, those missing of: $(bash scripts/install-servers.sh --list); $plan"
fi
echo "scripts/test.sh installs $plan"
if [ "${1:-}" = --plan ]; then exit 0; fi
if [ "$servers" = 1 ]; then
  bash scripts/install-servers.sh
fi
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test,build]'
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/lint-imports
.venv/bin/pytest "$@"
