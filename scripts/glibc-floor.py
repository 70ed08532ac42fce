#!/usr/bin/env python3
"""Prints the newest GLIBC symbol version that a frozen build needs: its glibc floor.

Every ELF file counts: the executables, the shared libraries of a folder build, and the
files packed inside a single-file build (read with PyInstaller's archive reader, since
objdump sees only the bootloader of that file). Versions come from ``objdump -T``.

Usage: scripts/glibc-floor.py [--max 2.28] [--verbose] PATH...
PATH is a file or a folder (searched recursively). With ``--max``, exit 1 when the floor is
newer than that version (the release workflow's check).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

GLIBC_VERSION = re.compile(r"\bGLIBC_(\d+(?:\.\d+)+)\b")
ELF_MAGIC = b"\x7fELF"

Version = tuple[int, ...]


def parse_version(text: str) -> Version:
    """``"2.28"`` -> ``(2, 28)``."""
    return tuple(int(part) for part in text.split("."))


def show(version: Version) -> str:
    """``(2, 28)`` -> ``"2.28"``."""
    return ".".join(str(part) for part in version)


def is_elf(path: Path) -> bool:
    """True when ``path`` is a regular file starting with the ELF magic."""
    if not path.is_file() or path.is_symlink():
        return False
    with path.open("rb") as f:
        return f.read(4) == ELF_MAGIC


def needed_versions(path: Path) -> set[Version]:
    """The GLIBC_x.y versions that ``path`` imports (``objdump -T``, dynamic symbols)."""
    out = subprocess.run(
        ["objdump", "-T", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return {parse_version(m.group(1)) for m in GLIBC_VERSION.finditer(out)}


def embedded_elves(path: Path, workdir: Path) -> Iterator[tuple[str, Path]]:
    """ELF files packed in a PyInstaller single-file executable, extracted to ``workdir``."""
    try:
        from PyInstaller.archive.readers import CArchiveReader  # noqa: PLC0415
    except ImportError:
        sys.exit("glibc-floor: reading a single-file build needs PyInstaller installed")
    try:
        archive = CArchiveReader(str(path))
    except Exception:  # not a PyInstaller executable: nothing packed inside
        return
    for index, name in enumerate(sorted(archive.toc)):
        data = archive.extract(name)
        if not data or not data.startswith(ELF_MAGIC):
            continue
        extracted = workdir / f"{index}-{Path(name).name}"
        extracted.write_bytes(data)
        yield f"{path}!{name}", extracted


def elf_files(paths: list[Path], workdir: Path) -> Iterator[tuple[str, Path]]:
    """(label, file) for every ELF file under ``paths``, packed ones included."""
    for root in paths:
        candidates = sorted(root.rglob("*")) if root.is_dir() else [root]
        for path in candidates:
            if is_elf(path):
                yield str(path), path
                yield from embedded_elves(path, workdir)


def main() -> int:
    """Print the floor; with --max, fail when it is newer than allowed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    parser.add_argument("--max", type=parse_version, help="fail when the floor exceeds this")
    parser.add_argument("--verbose", action="store_true", help="print each file's need")
    args = parser.parse_args()

    floor: Version = (0,)
    floor_file = ""
    count = 0
    with tempfile.TemporaryDirectory() as tmp:
        for label, path in elf_files(args.paths, Path(tmp)):
            count += 1
            versions = needed_versions(path)
            newest = max(versions, default=(0,))
            if args.verbose:
                print(f"{show(newest) if versions else '-':>6}  {label}")
            if newest > floor:
                floor, floor_file = newest, label
    if count == 0:
        print("glibc-floor: no ELF files found", file=sys.stderr)
        return 2
    print(f"GLIBC floor: {show(floor)} ({count} ELF files; newest needed by {floor_file})")
    if args.max is not None and floor > args.max:
        print(f"glibc-floor: {show(floor)} is newer than the allowed {show(args.max)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
