"""PyInstaller runtime hook: makes a long ``run`` of the single-file build independent of its
``_MEI`` extraction folder once it has started.

Temp cleaners (systemd-tmpfiles, Windows Disk Cleanup, macOS dirhelper) delete old files under
the temp dir, including the folder the single-file build unpacks itself into (pyinstaller
issues 7127, 5843). Pure-Python modules are read from the executable itself, but extension
modules, shared libraries, ``base_library.zip`` and data files are read from that folder
when first needed, which for a daemon can be days after start-up. So, for ``run`` only
(short commands keep their fast start), this hook loads every bundled extension module,
shared library and ``base_library.zip`` module now. No bundled data file is read after
start-up: the API client verifies with the OS trust store (truststore), not certifi's file;
the configuration and ``TRACKSSL_CA_BUNDLE`` live outside the folder.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

# Every command runs this hook, and a module imported here is one more read from the archive
# before ``--version`` can answer (zipfile, ctypes and pathlib pull in some sixty): the
# modules it needs are imported inside the functions, which run for ``run`` only.

# Commands that live long enough to meet a temp cleaner.
_LONG_RUNNING = frozenset({"run"})


def _bundle_dir() -> Path | None:
    """The extraction folder of a single-file build; None for a folder build or no freeze."""
    from pathlib import Path  # noqa: PLC0415 - see the imports

    meipass = getattr(sys, "_MEIPASS", None)
    if meipass is None:
        return None
    bundle = Path(meipass).resolve()
    exe_dir = Path(sys.executable).resolve().parent
    # A folder build keeps its files beside the executable (or in its _internal subfolder).
    if bundle in (exe_dir, exe_dir / "_internal"):
        return None
    return bundle


def _extension_modules(bundle: Path) -> list[str]:
    """Dotted names of the extension modules under the sys.path entries inside ``bundle``."""
    import importlib.machinery  # noqa: PLC0415 - see the imports
    from pathlib import Path  # noqa: PLC0415

    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    roots = sorted(
        {Path(entry).resolve() for entry in sys.path if entry and Path(entry).is_dir()},
        key=lambda p: len(p.parts),
        reverse=True,  # the deepest root names a module (lib-dynload before the bundle root)
    )
    roots = [root for root in roots if root == bundle or bundle in root.parents]
    names: dict[str, None] = {}
    for path in sorted(bundle.rglob("*")):
        suffix = next((s for s in suffixes if path.name.endswith(s)), None)
        if suffix is None:
            continue
        root = next((r for r in roots if r in path.parents), None)
        if root is None:
            continue
        parts = [*path.relative_to(root).parent.parts, path.name[: -len(suffix)]]
        if all(part.isidentifier() for part in parts):
            names[".".join(parts)] = None
    return list(names)


def _base_library_modules(bundle: Path) -> list[str]:
    """Dotted names of the modules in ``base_library.zip`` (encodings and the like)."""
    import zipfile  # noqa: PLC0415 - see the imports

    archive = bundle / "base_library.zip"
    if not archive.is_file():
        return []
    names = []
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():
            if not name.endswith(".pyc"):
                continue
            parts = name[: -len(".pyc")].split("/")
            if parts[-1] == "__init__":
                parts.pop()
            if parts:
                names.append(".".join(parts))
    return names


def _import_all(names: list[str]) -> None:
    import contextlib  # noqa: PLC0415 - see the imports
    import importlib  # noqa: PLC0415

    for name in names:
        # A module for another platform (encodings.mbcs on Linux, say) fails to import;
        # it would fail the same way later, so there is nothing to keep.
        with contextlib.suppress(Exception):
            importlib.import_module(name)


def _map_shared_objects(bundle: Path) -> None:
    """Map every bundled shared object into memory: libraries and extension files alike.

    A mapped file stays usable after it is deleted. This reaches what importing missed:
    glibc dlopens libgcc_s only when a thread first exits through pthread_exit (at shutdown,
    say), and a mypyc-compiled package loads its modules' shim files only on demand.
    """
    import contextlib  # noqa: PLC0415 - see the imports
    import ctypes  # noqa: PLC0415

    for path in sorted(bundle.rglob("*")):
        name = path.name.lower()
        if path.is_file() and (".so" in name or name.endswith((".dylib", ".dll", ".pyd"))):
            with contextlib.suppress(OSError):
                ctypes.CDLL(str(path))


def _preload() -> None:
    # Options come after the subcommand (SPEC section 2), so argv[1] names the command.
    if len(sys.argv) < 2 or sys.argv[1] not in _LONG_RUNNING:
        return
    bundle = _bundle_dir()
    if bundle is None:
        return
    _import_all(_base_library_modules(bundle))
    _import_all(_extension_modules(bundle))
    _map_shared_objects(bundle)


_preload()
