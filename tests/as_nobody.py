"""Running the agent's code as ``nobody``, a user with no privilege and no way into the
clone: a clone or venv under a private folder (/root, a 0700 dir) cannot be entered by
nobody, so the package and the distributions it needs are copied into a folder anyone can
read (``shared_dir``), and an interpreter of the same Python version that nobody can run
is found. ``setpriv`` (util-linux) then drops every capability: a truly unprivileged
process. Root only (``need_root``).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.shared_dirs import shared_dir

NOBODY = 65534
DROP = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "trackssl-agent"


def _requirements(name: str) -> set[str]:
    """The distributions ``name`` needs to run (extras left out), itself included."""
    seen: set[str] = set()
    pending = [name]
    while pending:
        current = pending.pop()
        key = re.sub(r"[-_.]+", "-", current).lower()
        if key in seen:
            continue
        seen.add(key)
        for requirement in importlib.metadata.distribution(current).requires or []:
            if "extra ==" not in requirement:
                match = re.match(r"[A-Za-z0-9._-]+", requirement)
                assert match, requirement
                pending.append(match.group())
    return seen


def _copy_distribution(name: str, tree: Path) -> None:
    """Copy the installed files of distribution ``name`` into ``tree`` (a site dir)."""
    dist = importlib.metadata.distribution(name)
    for file in dist.files or []:
        source = Path(str(dist.locate_file(file)))
        if file.parts[0] == ".." or not source.is_file():
            continue  # scripts in bin/, files RECORD names but the install left out
        target = tree / file
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def _readable_by_all(tree: Path) -> None:
    """0755 folders, 0644 files: whatever the umask made of the copies (077 makes 0600)."""
    for folder, _dirs, files in os.walk(tree):
        Path(folder).chmod(0o755)
        for name in files:
            (Path(folder) / name).chmod(0o644)


def _interpreter() -> str:
    """A Python of this version that nobody can run."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [
        sys.executable,
        getattr(sys, "_base_executable", sys.executable),
        os.path.realpath(sys.executable),
        shutil.which(f"python{version}") or "",
        f"/usr/bin/python{version}",
        f"/usr/local/bin/python{version}",
    ]
    check = "import sys; print('%d.%d' % sys.version_info[:2])"
    for candidate in dict.fromkeys(c for c in candidates if c):
        done = subprocess.run(
            [*DROP, candidate, "-I", "-c", check],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if done.returncode == 0 and done.stdout.strip() == version:
            return candidate
    raise RuntimeError(f"no Python {version} that nobody can run among {candidates}")


@dataclass(frozen=True)
class NobodyPython:
    """An interpreter nobody can run and a readable copy of the package with its needs."""

    interpreter: str
    tree: Path

    @classmethod
    def prepare(cls) -> NobodyPython:
        """Copy this worktree's package and its installed requirements; find the Python."""
        tree = shared_dir("nobody-python")
        for name in _requirements(PACKAGE) - {PACKAGE}:
            _copy_distribution(name, tree)
        # The package under test from the worktree (it is installed editable, by path).
        shutil.copytree(
            ROOT / "trackssl_agent", tree / "trackssl_agent",
            ignore=shutil.ignore_patterns("__pycache__"),
        )  # fmt: skip
        _readable_by_all(tree)
        return cls(_interpreter(), tree)

    def code(self, source: str, *args: str) -> list[str]:
        """argv running ``source`` as nobody with the copy first on ``sys.path``; ``-I``
        keeps the runner's PYTHON* variables and user site out."""
        bootstrap = f"import sys; sys.path.insert(0, {str(self.tree)!r})\n{source}"
        return [*DROP, self.interpreter, "-I", "-B", "-c", bootstrap, *args]

    def agent(self, *args: str) -> list[str]:
        """argv running ``trackssl-agent ARGS`` as nobody."""
        run = "import runpy; runpy.run_module('trackssl_agent', run_name='__main__')"
        return self.code(run, *args)
