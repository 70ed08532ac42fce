"""The layer rules of ARCHITECTURE.md, written once as import-linter contracts in
pyproject.toml: the package keeps every one, and an upward import, a circle or click outside
``cli/`` breaks the contract that names it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sysconfig.get_path("scripts")) / (
    "lint-imports.exe" if os.name == "nt" else "lint-imports"
)
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
CONTRACTS = {c["id"]: c["name"] for c in PYPROJECT["tool"]["importlinter"]["contracts"]}
"""Each contract's name by its id."""


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports over the package under ``root``, with the contracts of its pyproject.toml."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(root / "pyproject.toml")],
        cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_the_package_keeps_every_contract() -> None:
    """lint-imports passes on the tree as it is, each contract of the table kept."""
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    shown = " ".join(result.stdout.split())  # long contract names are wrapped
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in shown
    for name in CONTRACTS.values():
        assert f"{name} KEPT" in shown


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("engine/probe.py", "import trackssl_agent.cloud.api", "engine"),
        ("engine/probe_pool.py", "from trackssl_agent.config import settings", "engine"),
        ("cloud/api.py", "from trackssl_agent.config.config import Config", "cloud"),
        ("state/outbox.py", "from trackssl_agent.engine import results", "state"),
        ("render/output.py", "from trackssl_agent.config import settings", "render"),
        ("config/settings.py", "import trackssl_agent.render.report", "config"),
        ("verdict/judge.py", "from trackssl_agent.config import settings", "verdict"),
        ("base/redaction.py", "import trackssl_agent.log", "base"),
        ("doctor/probe.py", "from trackssl_agent.agent import cycle", "commands"),
        ("agent/cycle.py", "import trackssl_agent.cli.options", "cli"),
        ("render/output.py", "import click", "click"),
        ("log.py", "import trackssl_agent.engine.results", "top"),
        ("errors.py", "import trackssl_agent.log", "layers"),
        ("engine/protocols.py", "import trackssl_agent.engine.dialogues", "acyclic"),
    ],
)
def test_an_import_against_the_rules_fails_lint_imports(
    tmp_path: Path, module: str, line: str, broken: str
) -> None:
    """A copy of the package with one import against the table fails lint-imports, naming
    the contract it breaks."""
    shutil.copytree(ROOT / "trackssl_agent", tmp_path / "trackssl_agent",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / "trackssl_agent" / module
    path.write_text(path.read_text(encoding="utf-8") + f"\n{line}\n", encoding="utf-8")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    shown = " ".join(result.stdout.split())
    assert f"{CONTRACTS[broken]} BROKEN" in shown
