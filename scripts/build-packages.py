#!/usr/bin/env python3
"""Builds the Linux packages, a .deb (dpkg-deb) and an .rpm (rpmbuild), around the
single-file executable, from one description: build/packages/package.toml and the
maintainer-script fragments beside it. The units come from build/linux/ with the
executable's path changed to the package's.

Usage: scripts/build-packages.py --binary dist/trackssl-agent [--out dist/packages]
                                 [--format deb] [--format rpm] [--version X.Y.Z]

The version is the executable's own (``--version``) unless given; the architecture is read
from its ELF header. Timestamps come from SOURCE_DATE_EPOCH (else the last commit), so two
builds of one commit differ as little as the tools allow. Standard library only.
"""

from __future__ import annotations

import argparse
import email.utils
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DESCRIPTION = ROOT / "build" / "packages"
UNITS = ROOT / "build" / "linux"
UNIT_EXECUTABLE = "/usr/local/bin/trackssl-agent"
"""The executable's path in build/linux/ (the bare-binary install); packages use their own."""

ELF_MACHINES = {0x3E: ("x86_64", "amd64"), 0xB7: ("aarch64", "arm64")}
"""ELF e_machine: (rpm architecture, Debian architecture)."""

FALLBACK_EPOCH = 1767225600
"""2026-01-01, for a tree without commits (as scripts/build-binary.sh)."""


@dataclass(frozen=True)
class Package:
    """The description in build/packages/package.toml, with the version and architecture."""

    values: dict[str, Any]
    version: str
    rpm_arch: str
    deb_arch: str
    epoch: int

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    @property
    def deb_version(self) -> str:
        """Upstream version and the package's revision (``0.1.0-1``)."""
        return f"{self.version}-{self['revision']}"

    def substitute(self, text: str) -> str:
        """Fill the fragments' @NAME@ placeholders; fail on one left over."""
        fields = {
            "NAME": self["name"], "USER": self["user"], "STATE_DIR": self["state_dir"],
            "CACHE_DIR": self["cache_dir"], "CONFIG": self["config"],
            "CONFIG_DIR": self["config_dir"], "DAEMON": self["daemon"],
            "UNITS": " ".join(self["units"]),
        }  # fmt: skip
        for key, value in fields.items():
            text = text.replace(f"@{key}@", value)
        left = re.search(r"@[A-Z_]+@", text)
        if left:
            raise SystemExit(f"build-packages: unknown placeholder {left.group()}")
        return text

    def fragment(self, name: str) -> str:
        """One maintainer-script fragment of build/packages/, filled in."""
        return self.substitute((DESCRIPTION / name).read_text())


def read_description(binary: Path, version: str | None, epoch: int) -> Package:
    """package.toml, the architecture of ``binary`` and its version."""
    values = tomllib.loads((DESCRIPTION / "package.toml").read_text())
    header = binary.read_bytes()[:20]
    if header[:4] != b"\x7fELF" or header[5] != 1:
        raise SystemExit(f"build-packages: {binary} is not a little-endian ELF executable")
    machine = int.from_bytes(header[18:20], "little")
    if machine not in ELF_MACHINES:
        raise SystemExit(f"build-packages: {binary}: no package architecture for ELF {machine}")
    rpm_arch, deb_arch = ELF_MACHINES[machine]
    if version is None:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, check=True, timeout=120
        ).stdout
        match = re.fullmatch(rf"{re.escape(values['name'])} (\S+)\n", out)
        if not match:
            raise SystemExit(f"build-packages: unexpected --version answer {out!r}")
        version = match.group(1)
    # 1.2.0rc1 sorts before 1.2.0 in both formats only as 1.2.0~rc1.
    version = re.sub(r"(\d)\.?(a|b|rc|dev)(\d*)", r"\1~\2\3", version)
    return Package(values, version, rpm_arch, deb_arch, epoch)


def source_date_epoch() -> int:
    """SOURCE_DATE_EPOCH, else the last commit's time, else a fixed date."""
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "log", "-1", "--format=%ct"],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout  # fmt: skip
        return int(out.strip())
    except (OSError, subprocess.CalledProcessError, ValueError):
        return FALLBACK_EPOCH


def put(root: Path, path: str, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` under ``root`` with ``mode``."""
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    target.chmod(mode)


def unit_text(pkg: Package, name: str) -> bytes:
    """A unit of build/linux/ with the package's executable path."""
    text = (UNITS / name).read_text()
    if name.endswith(".service") and UNIT_EXECUTABLE not in text:
        raise SystemExit(f"build-packages: {name} does not run {UNIT_EXECUTABLE}")
    return text.replace(UNIT_EXECUTABLE, pkg["executable"]).encode()


def stage(pkg: Package, binary: Path, root: Path, unit_dir: str) -> None:
    """The installed tree that both formats share, with its modes."""
    put(root, pkg["executable"], binary.read_bytes(), 0o755)
    for name in pkg["units"]:
        put(root, f"{unit_dir}/{name}", unit_text(pkg, name), 0o644)
    for name in pkg["shared"]:
        put(root, f"{pkg['share_dir']}/{name}", (UNITS / name).read_bytes(), 0o644)
    put(root, pkg["config"], (DESCRIPTION / "environment.txt").read_bytes(), 0o600)


def set_folder_modes(pkg: Package, root: Path) -> None:
    """Folders 0755 whatever the umask, the configuration's 0750 (it holds the token)."""
    for folder in (path for path in root.rglob("*") if path.is_dir()):
        folder.chmod(0o755)
    root.chmod(0o755)
    (root / pkg["config_dir"].lstrip("/")).chmod(0o750)


def clamp_mtimes(root: Path, epoch: int) -> None:
    """Every file and folder dated ``epoch`` (reproducible archives)."""
    for path in [root, *root.rglob("*")]:
        os.utime(path, (epoch, epoch), follow_symlinks=False)


def script(pkg: Package, cases: dict[str, list[str]]) -> bytes:
    """A POSIX maintainer script running the named fragments for each of its arguments."""
    lines = ["#!/bin/sh", "# Generated by scripts/build-packages.py from build/packages/.",
             "set -e", 'case "$1" in']  # fmt: skip
    for case, fragments in cases.items():
        lines.append(f"    {case})")
        for name in fragments:
            body = pkg.fragment(name).rstrip("\n")
            lines += [f"        {line}" if line else "" for line in body.splitlines()]
        lines.append("        ;;")
    lines += ["esac", "exit 0", ""]
    return "\n".join(lines).encode()


def deb_control(pkg: Package, installed_kib: int) -> bytes:
    """DEBIAN/control."""
    deb = pkg["deb"]
    body = "\n".join(
        f" {line}" if line.strip() else " ." for line in pkg["description"].strip().splitlines()
    )
    fields = [
        ("Package", pkg["name"]), ("Version", pkg.deb_version),
        ("Architecture", pkg.deb_arch), ("Maintainer", pkg["maintainer"]),
        ("Installed-Size", str(installed_kib)), ("Depends", deb["depends"]),
        ("Section", deb["section"]), ("Priority", deb["priority"]),
        ("Homepage", pkg["homepage"]), ("Description", pkg["summary"]),
    ]  # fmt: skip
    return ("".join(f"{key}: {value}\n" for key, value in fields) + body + "\n").encode()


def build_deb(pkg: Package, binary: Path, out: Path, work: Path) -> Path:
    """The .deb, built with dpkg-deb from the staged tree and the generated control files."""
    root = work / "deb"
    deb = pkg["deb"]
    stage(pkg, binary, root, deb["unit_dir"])
    doc = f"/usr/share/doc/{pkg['name']}"
    put(root, f"{doc}/copyright", copyright_text(pkg), 0o644)
    put(root, f"{doc}/changelog.Debian.gz", gzipped(deb_changelog(pkg), pkg.epoch), 0o644)
    overrides = (DESCRIPTION / "lintian-overrides").read_bytes()
    put(root, f"/usr/share/lintian/overrides/{pkg['name']}", overrides, 0o644)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    md5sums = "".join(
        f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.relative_to(root)}\n"  # noqa: S324 - dpkg's format
        for p in files
    )
    installed_kib = sum((p.stat().st_size + 1023) // 1024 for p in files)
    put(root, "DEBIAN/control", deb_control(pkg, installed_kib), 0o644)
    put(root, "DEBIAN/conffiles", f"{pkg['config']}\n".encode(), 0o644)
    put(root, "DEBIAN/md5sums", md5sums.encode(), 0o644)
    put(root, "DEBIAN/postinst", script(pkg, {
        "configure": ["create-user.sh", "config-owner-deb.sh", "reload-systemd.sh",
                      "restart-daemon.sh"],
    }), 0o755)  # fmt: skip
    put(root, "DEBIAN/prerm", script(pkg, {"remove|deconfigure": ["stop-units.sh"]}), 0o755)
    put(root, "DEBIAN/postrm", script(pkg, {
        "remove": ["reload-systemd.sh"],
        "purge": ["purge.sh", "reload-systemd.sh"],
    }), 0o755)  # fmt: skip
    set_folder_modes(pkg, root)
    clamp_mtimes(root, pkg.epoch)
    target = out / f"{pkg['name']}_{pkg.deb_arch}.deb"
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(pkg.epoch)}
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root), str(target)],
        check=True, env=env, timeout=600, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return target


def deb_changelog(pkg: Package) -> bytes:
    """The Debian changelog of this package revision (one entry)."""
    date = email.utils.formatdate(pkg.epoch, usegmt=False).replace("-0000", "+0000")
    return (
        f"{pkg['name']} ({pkg.deb_version}) unstable; urgency=medium\n\n"
        f"  * Package of {pkg['name']} {pkg.version}; the changes are in the release notes\n"
        f"    and CHANGELOG.md at {pkg['homepage']}.\n\n"
        f" -- {pkg['maintainer']}  {date}\n"
    ).encode()


def copyright_text(pkg: Package) -> bytes:
    """debian/copyright in the machine-readable format, with the license's text."""
    license_text = (ROOT / "LICENSE").read_text()
    holder = next(line for line in license_text.splitlines() if line.startswith("Copyright"))
    body = "\n".join(f" {line}" if line.strip() else " ." for line in license_text.splitlines())
    return (
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
        f"Upstream-Name: {pkg['name']}\nSource: {pkg['homepage']}\n\n"
        f"Files: *\n{holder}\nLicense: {pkg['license']}\n{body}\n"
    ).encode()


def gzipped(data: bytes, epoch: int) -> bytes:
    """``data`` gzipped at the highest level, with a fixed time and no file name."""
    return gzip.compress(data, compresslevel=9, mtime=epoch)


def rpm_spec(pkg: Package, stage_dir: Path) -> str:
    """The .spec: the staged tree copied in, the scriptlets from the same fragments."""
    rpm = pkg["rpm"]
    user = pkg["user"]

    def scriptlet(names: list[str]) -> str:
        # rpm expands % in scriptlets; the fragments are shell.
        return "".join(pkg.fragment(name).replace("%", "%%") for name in names)

    date = email.utils.formatdate(pkg.epoch)
    day = " ".join(date.replace(",", "").split()[:4])  # Thu 01 Jan 2026
    weekday, number, month, year = day.split()
    files = [
        f"%attr(0755,root,root) {pkg['executable']}",
        *(f"%attr(0644,root,root) {rpm['unit_dir']}/{name}" for name in pkg["units"]),
        f"%dir %attr(0755,root,root) {pkg['share_dir']}",
        *(f"%attr(0644,root,root) {pkg['share_dir']}/{name}" for name in pkg["shared"]),
        f"%dir %attr(0750,root,{user}) {pkg['config_dir']}",
        f"%config(noreplace) %attr(0600,{user},{user}) {pkg['config']}",
        f"%license /usr/share/licenses/{pkg['name']}/LICENSE",
    ]
    return f"""# Generated by scripts/build-packages.py from build/packages/.
Name: {pkg["name"]}
Version: {pkg.version}
Release: {pkg["revision"]}
Summary: {pkg["summary"][:1].upper() + pkg["summary"][1:]}
Packager: {pkg["maintainer"]}
License: {pkg["license"]}
URL: {pkg["homepage"]}
Requires(pre): {rpm["requires_pre"]}
# A PyInstaller single file carries its program after the ELF part: stripping or
# build-id processing would break it, and there is nothing to debug here.
%global debug_package %{{nil}}
%global __os_install_post %{{nil}}
%global _build_id_links none

%description
{pkg["description"].strip().replace(chr(10) + "." + chr(10), chr(10) + chr(10))}

%install
cp -a {stage_dir}/. %{{buildroot}}/

%pre
{scriptlet(["create-user.sh"])}
%post
{scriptlet(["reload-systemd.sh"])}
%preun
if [ "$1" -eq 0 ]; then
{scriptlet(["stop-units.sh"])}fi

%postun
{scriptlet(["reload-systemd.sh"])}if [ "$1" -ge 1 ]; then
{scriptlet(["restart-daemon.sh"])}fi

%files
{chr(10).join(files)}

%changelog
* {weekday} {month} {number} {year} {pkg["maintainer"]} - {pkg.version}-{pkg["revision"]}
- Package of {pkg["name"]} {pkg.version}.
"""


def build_rpm(pkg: Package, binary: Path, out: Path, work: Path) -> Path:
    """The .rpm, built with rpmbuild from the staged tree and the generated .spec."""
    root = work / "rpm-stage"
    stage(pkg, binary, root, pkg["rpm"]["unit_dir"])
    put(root, f"/usr/share/licenses/{pkg['name']}/LICENSE", (ROOT / "LICENSE").read_bytes(), 0o644)
    set_folder_modes(pkg, root)
    clamp_mtimes(root, pkg.epoch)
    spec = work / f"{pkg['name']}.spec"
    spec.write_text(rpm_spec(pkg, root))
    top = work / "rpmbuild"
    defines = {
        "_topdir": str(top), "_rpmdir": str(work / "rpms"),
        "_build_name_fmt": "%{NAME}.%{ARCH}.rpm", "_buildhost": "reproducible",
        "use_source_date_epoch_as_buildtime": "1", "clamp_mtime_to_source_date_epoch": "1",
        # gzip: every rpm reads it (the single file inside is compressed already).
        "_binary_payload": "w9.gzdio",
    }  # fmt: skip
    command = ["rpmbuild", "-bb", "--target", pkg.rpm_arch]
    for key, value in defines.items():
        command += ["--define", f"{key} {value}"]
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(pkg.epoch)}
    subprocess.run(
        [*command, str(spec)], check=True, env=env, timeout=600,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    built = work / "rpms" / f"{pkg['name']}.{pkg.rpm_arch}.rpm"
    target = out / built.name
    shutil.move(built, target)
    return target


def main(argv: list[str] | None = None) -> int:
    """Build the packages asked for and print their paths."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", type=Path, required=True, help="the single-file executable")
    parser.add_argument("--out", type=Path, default=ROOT / "dist" / "packages")
    parser.add_argument("--format", action="append", choices=["deb", "rpm"], dest="formats")
    parser.add_argument("--version", help="the agent's version (default: the binary's)")
    args = parser.parse_args(argv)
    pkg = read_description(args.binary, args.version, source_date_epoch())
    args.out.mkdir(parents=True, exist_ok=True)
    builders = {"deb": build_deb, "rpm": build_rpm}
    with tempfile.TemporaryDirectory(prefix="trackssl-packages-") as work:
        for name in args.formats or ["deb", "rpm"]:
            try:
                path = builders[name](pkg, args.binary, args.out, Path(work))
            except subprocess.CalledProcessError as exc:
                detail = (exc.stderr or b"").decode(errors="replace").strip()
                print(f"build-packages: {exc.cmd[0]} failed: {detail}", file=sys.stderr)
                return 1
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
