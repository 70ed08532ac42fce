"""The frozen builds under test: where they are, and building them once when stale.

Shared by test_frozen.py and test_frozen_legacy.py, so that a fresh clone's test run builds
before either uses a build (under CI nothing that needs a build may skip).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUFFIX = ".exe" if os.name == "nt" else ""
ONEFILE = ROOT / "dist" / f"trackssl-agent{SUFFIX}"
FOLDER = ROOT / "dist" / "trackssl-agent-folder" / f"trackssl-agent{SUFFIX}"


def build_inputs() -> list[Path]:
    """The files that go into the build: a change to any of them means a new build."""
    return [
        *ROOT.glob("trackssl_agent/**/*.py"),
        *ROOT.glob("build/hooks/*.py"),
        ROOT / "pyinstaller.spec",
        ROOT / "pyproject.toml",
        ROOT / "build" / "requirements-build.txt",
        # The Windows version resource (pyinstaller.spec imports it) and the Windows build.
        ROOT / "build" / "windows" / "version_info.py",
        ROOT / "scripts" / "build-binary.sh",
        ROOT / "scripts" / "build-binary.ps1",
    ]


def newest_source() -> float:
    """The newest modification time among the files that go into the build."""
    return max(path.stat().st_mtime for path in build_inputs())


def build() -> None:
    """Run the project's build script, which makes its own pinned build environment from
    this interpreter (``.build-venv/``) and builds both forms."""
    if sys.platform == "win32":
        script = ROOT / "scripts" / "build-binary.ps1"
        command = ["powershell", "-NoProfile", "-ExecutionPolicy", "Bypass", "-File"]
        command += [str(script), "-Python", sys.executable]
    else:
        command = ["bash", str(ROOT / "scripts" / "build-binary.sh")]
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(command, cwd=ROOT, env=env, check=True, timeout=900)


def ensure_built() -> Path:
    """The single-file executable, built now unless an up-to-date build exists."""
    outputs = (ONEFILE, FOLDER)
    built = all(path.exists() for path in outputs)
    if not built or min(path.stat().st_mtime for path in outputs) < newest_source():
        build()
    return ONEFILE
