"""The Windows version resource of trackssl-agent.exe (Properties > Details), as the text file
PyInstaller's ``EXE(version=...)`` reads, generated from ``trackssl_agent.__version__``.

pyinstaller.spec calls ``write()`` on Windows builds only. By hand:
``python build/windows/version_info.py OUT.txt`` (prints the file's path).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMPANY = "TrackSSL"
PRODUCT = "trackssl-agent"
DESCRIPTION = "TrackSSL agent: reports TLS certificates of private servers"

# The text is a Python expression PyInstaller evaluates with its versioninfo classes in scope.
TEMPLATE = """\
# UTF-8
VSVersionInfo(
  ffi=FixedFileInfo(
    filevers={numbers},
    prodvers={numbers},
    mask=0x3f,
    flags=0x0,
    OS=0x40004,
    fileType=0x1,
    subtype=0x0,
    date=(0, 0)
  ),
  kids=[
    StringFileInfo([
      StringTable(
        '040904B0',
        [StringStruct('CompanyName', {company!r}),
         StringStruct('FileDescription', {description!r}),
         StringStruct('FileVersion', {version!r}),
         StringStruct('InternalName', {product!r}),
         StringStruct('LegalCopyright', {copyright!r}),
         StringStruct('OriginalFilename', {filename!r}),
         StringStruct('ProductName', {product!r}),
         StringStruct('ProductVersion', {version!r})])
    ]),
    VarFileInfo([VarStruct('Translation', [1033, 1200])])
  ]
)
"""


def package_version(root: Path = ROOT) -> str:
    """``__version__`` read from the source (no import: the build env may lack the deps)."""
    text = (root / "trackssl_agent" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    if match is None:
        raise SystemExit("version_info: no __version__ in trackssl_agent/__init__.py")
    return match.group(1)


def numbers(version: str) -> tuple[int, int, int, int]:
    """The four 16-bit numbers Windows shows: ``1.2.3rc1`` -> ``(1, 2, 3, 0)``."""
    parts = [int(part) for part in re.findall(r"\d+", version.split("+", maxsplit=1)[0])[:3]]
    parts += [0] * (4 - len(parts))
    if any(part > 0xFFFF for part in parts):
        raise SystemExit(f"version_info: {version} does not fit a Windows version resource")
    return (parts[0], parts[1], parts[2], parts[3])


def version_info_text(version: str) -> str:
    """The version file for ``version``."""
    return TEMPLATE.format(
        numbers=numbers(version),
        company=COMPANY,
        description=DESCRIPTION,
        version=version,
        product=PRODUCT,
        copyright="MIT License",
        filename=f"{PRODUCT}.exe",
    )


def write(path: str | Path, root: Path = ROOT) -> str:
    """Write the version file of this checkout to ``path``; return the path as a string."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(version_info_text(package_version(root)), encoding="utf-8")
    return str(out)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: version_info.py OUT.txt")
    print(write(sys.argv[1]))
