"""The unattended wrappers under build/: Task Scheduler XML and its install scripts, systemd
units (and what each key needs of systemd), the launchd plist and its newsyslog entry, the
Dockerfile and compose file, and the Windows version resource."""

from __future__ import annotations

import ast
import importlib.util
import os
import plistlib
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType

import pytest

from tests.cli_helpers import agent_environ
from trackssl_agent import __version__

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"
DEPLOYMENT = ROOT / "docs" / "deployment.md"
"""The install, service and uninstall steps per platform (the README has the short form)."""
TASK_XML = BUILD / "windows" / "trackssl-agent-task.xml"
TASK_NS = {"t": "http://schemas.microsoft.com/windows/2004/02/mit/task"}
INSTALL_PS1 = ROOT / "scripts" / "install-windows-task.ps1"
LINUX = BUILD / "linux"
SERVICES = ("trackssl-agent.service", "trackssl-agent-check.service")
DROP_IN = LINUX / "hardening-systemd245.conf"
PLIST = BUILD / "macos" / "com.trackssl.agent.plist"
NEWSYSLOG = BUILD / "macos" / "trackssl-agent.newsyslog.conf"
DOCKER = BUILD / "docker"
EXE = "/usr/local/bin/trackssl-agent"
# Where the units let the single file unpack itself: executable on hosts whose /tmp is
# noexec (CIS) and on Debian and Ubuntu, whose /run is noexec.
UNPACK_DIR = "/var/cache/trackssl-agent"
CONFIG = "/etc/trackssl-agent/environment.txt"
USER = "trackssl-agent"

# The oldest systemd the units must load cleanly on: RHEL/Alma/Rocky 8.
OLDEST_SYSTEMD = 239

# The systemd version that introduced each key the units use (systemd.directives(7) and
# NEWS; values that need a newer systemd than their key are listed under KEY=VALUE).
# Keys that even RHEL 7's systemd 219 knows are listed as 219. A key missing here fails
# test_every_unit_key_has_a_known_systemd_version, so a new key needs a look-up first.
SYSTEMD_SINCE = {
    "Description": 219, "Documentation": 219, "Wants": 219, "After": 219,
    "Type": 219, "ExecStart": 219, "Environment": 219, "KillSignal": 219,
    "TimeoutStopSec": 219, "TimeoutStartSec": 219, "Restart": 219, "RestartSec": 219,
    "RestartPreventExitStatus": 219, "User": 219, "Group": 219, "UMask": 219,
    "WantedBy": 219, "OnCalendar": 219, "Persistent": 219, "Unit": 219,
    "PrivateTmp": 219, "PrivateDevices": 219, "NoNewPrivileges": 219, "ProtectHome": 219,
    "CapabilityBoundingSet": 219, "SystemCallArchitectures": 219, "SystemCallFilter": 219,
    "SystemCallErrorNumber": 219, "RestrictAddressFamilies": 219, "ProtectSystem": 219,
    "AmbientCapabilities": 229, "RestrictRealtime": 231, "MemoryDenyWriteExecute": 231,
    "RandomizedDelaySec": 229, "RemoveIPC": 232, "ProtectKernelTunables": 232,
    "CacheDirectory": 235, "CacheDirectoryMode": 235,
    "ProtectKernelModules": 232, "ProtectControlGroups": 232, "RestrictNamespaces": 233,
    "LockPersonality": 235, "StateDirectory": 235, "StateDirectoryMode": 235,
    "ProtectSystem=strict": 232, "SystemCallFilter=@system-service": 239,
    "ProtectHostname": 242, "RestrictSUIDSGID": 242, "ProtectKernelLogs": 244,
    "ProtectClock": 245,
    "SuccessExitStatus": 219, "ReadWritePaths": 231,
}  # fmt: skip

HARDENING = {
    "User": USER,
    "Group": USER,
    "StateDirectory": "trackssl-agent",
    "StateDirectoryMode": "0700",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "NoNewPrivileges": "yes",
    "RemoveIPC": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "CapabilityBoundingSet": "",
    "SystemCallArchitectures": "native",
    "SystemCallFilter": "@system-service",
    "UMask": "0077",
}
NEWER_HARDENING = {
    "ProtectHostname": "yes",
    "RestrictSUIDSGID": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectClock": "yes",
}


def task() -> ET.Element:
    """The parsed task template (fails the test if it is not well-formed XML)."""
    return ET.parse(TASK_XML).getroot()  # noqa: S314 - our own file from the repository


def text(root: ET.Element, path: str) -> str:
    """The text of the one element at ``path`` (task namespace as ``t:``)."""
    found = root.findall(path, TASK_NS)
    assert len(found) == 1, f"{path}: {len(found)} elements"
    return (found[0].text or "").strip()


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file as {section: {key: [values]}} (keys may repeat, as in systemd)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path.name}:{number}: not KEY=VALUE in a section"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    """One of the units in build/linux."""
    return parse_unit(LINUX / name)


def one(section: dict[str, list[str]], key: str) -> str:
    """The single value of ``key``."""
    values = section.get(key, [])
    assert len(values) == 1, f"{key}: {values}"
    return values[0]


def environment(section: dict[str, list[str]]) -> dict[str, str]:
    """The variables a unit's ``Environment=`` lines set (one assignment per line here)."""
    pairs = [value.partition("=") for value in section.get("Environment", [])]
    assert all(sep and " " not in value for _key, sep, value in pairs), pairs
    return {key: value for key, _sep, value in pairs}


def powershell_code(script: str) -> str:
    """A PowerShell script without its comment lines and its <# ... #> help block."""
    script = re.sub(r"<#.*?#>", "", script, flags=re.DOTALL)
    return "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))


def needs(key: str, value: str) -> int:
    """The systemd version that ``key=value`` needs (a value may need more than its key)."""
    assert key in SYSTEMD_SINCE, f"{key}: add the systemd version that introduced it"
    return max(SYSTEMD_SINCE[key], SYSTEMD_SINCE.get(f"{key}={value}", 0))


def unit_keys(path: Path) -> list[tuple[str, str]]:
    """Every (key, value) of a unit or drop-in file."""
    return [
        (key, value)
        for section in parse_unit(path).values()
        for key, values in section.items()
        for value in values
    ]


def systemd_version(analyze: str) -> int:
    """The major version of the local systemd (``systemd 252 (252.38-1~deb12u1)``)."""
    out = subprocess.run(
        [analyze, "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    match = re.match(r"systemd (\d+)", out)
    assert match, out
    return int(match.group(1))


def systemd_analyze() -> str:
    """systemd-analyze; on Linux under CI=true its absence fails, elsewhere it skips."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if sys.platform.startswith("linux") and os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is not installed (apt-get install systemd)")
        pytest.skip("systemd-analyze is not installed")
    return analyze


def load_module(path: Path) -> ModuleType:
    """Import a script that lives outside the package by its path."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- Task Scheduler -----------------------------------------------------------------------


def test_task_xml_runs_check_once_from_the_working_dir() -> None:
    """The task executes the agent's check-once with config and log file, in a set directory."""
    root = task()
    assert root.tag == f"{{{TASK_NS['t']}}}Task"
    assert text(root, "t:Actions/t:Exec/t:Command") == "__EXE__"
    arguments = text(root, "t:Actions/t:Exec/t:Arguments")
    assert arguments.split()[0] == "check-once"
    assert '--config "__CONFIG__"' in arguments
    assert '--log-file "__LOG_FILE__"' in arguments
    assert text(root, "t:Actions/t:Exec/t:WorkingDirectory") == "__WORKDIR__"


def test_task_xml_settings_for_unattended_runs() -> None:
    """No overlap, catch-up after a missed run, a time limit well under the 4 h period."""
    root = task()
    assert text(root, "t:Settings/t:MultipleInstancesPolicy") == "IgnoreNew"
    assert text(root, "t:Settings/t:StartWhenAvailable") == "true"
    assert text(root, "t:Settings/t:Enabled") == "true"
    assert text(root, "t:Settings/t:DisallowStartIfOnBatteries") == "false"
    limit = text(root, "t:Settings/t:ExecutionTimeLimit")
    # PT0S would mean "no limit" and the default is 72 h: both let a hung run block the next.
    match = re.fullmatch(r"PT(\d+)H", limit)
    assert match and 0 < int(match.group(1)) < 4, limit


def test_task_xml_every_four_hours_as_system() -> None:
    """One time trigger repeating every 4 hours forever; the principal is filled in (SYSTEM)."""
    root = task()
    found = root.find("t:Triggers", TASK_NS)
    assert found is not None
    triggers = list(found)
    assert [t.tag.split("}")[1] for t in triggers] == ["TimeTrigger"]
    assert text(root, "t:Triggers/t:TimeTrigger/t:Repetition/t:Interval") == "PT4H"
    assert root.find("t:Triggers/t:TimeTrigger/t:Repetition/t:Duration", TASK_NS) is None
    assert text(root, "t:Triggers/t:TimeTrigger/t:Enabled") == "true"
    assert text(root, "t:Triggers/t:TimeTrigger/t:RandomDelay") == "PT10M"
    assert text(root, "t:Principals/t:Principal/t:UserId") == "__USER__"
    install = INSTALL_PS1.read_text()
    assert re.search(r"\[string\] \$User = 'S-1-5-18'", install), "SYSTEM is not the default"


def test_install_script_fills_every_placeholder_of_the_template() -> None:
    """The placeholders of the template and those the install script replaces are the same."""
    placeholders = set(re.findall(r"__[A-Z_]+__", TASK_XML.read_text()))
    install = INSTALL_PS1.read_text()
    filled = set(re.findall(r"'(__[A-Z_]+__)'\s*=", install))
    assert placeholders == filled
    assert "SecurityElement]::Escape" in install  # paths with & or < stay well-formed
    uninstall = (ROOT / "scripts" / "uninstall-windows-task.ps1").read_text()
    assert "Unregister-ScheduledTask" in uninstall


def test_task_xml_filled_with_awkward_paths_stays_well_formed() -> None:
    """Filling the template with XML-escaped paths (&, quotes) keeps it parseable and exact."""
    exe = r"C:\Program Files\R&D <tools>\trackssl-agent.exe"
    xml = TASK_XML.read_text()
    for key, value in {
        "__EXE__": exe,
        "__CONFIG__": r"C:\ProgramData\TrackSSL\environment.txt",
        "__LOG_FILE__": r"C:\ProgramData\TrackSSL\logs\trackssl-agent.log",
        "__WORKDIR__": r"C:\ProgramData\TrackSSL",
        "__USER__": "S-1-5-18",
        "__START__": "2026-11-27T00:00:00",
    }.items():
        escaped = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        xml = xml.replace(key, escaped)
    root = ET.fromstring(xml.encode())  # noqa: S314 - our own template, filled here
    assert text(root, "t:Actions/t:Exec/t:Command") == exe
    assert "__" not in xml.split("-->", 1)[1]


def test_install_script_start_time_is_culture_invariant() -> None:
    """The start boundary is formatted with the invariant culture's sortable pattern, never the
    current culture (a Thai or Hijri calendar year would keep the task from ever firing)."""
    install = INSTALL_PS1.read_text()
    [start] = re.findall(r"^\$start = (.+)$", install, re.MULTILINE)
    invariant = "[System.Globalization.CultureInfo]::InvariantCulture"
    assert start == f"(Get-Date).Date.ToString('s', {invariant})"
    assert "'__START__'    = $start" in install
    code = "\n".join(line for line in install.splitlines() if not line.lstrip().startswith("#"))
    assert "-Format" not in code
    # A custom pattern such as 'yyyy-MM-ddTHH:mm:ss' follows the current culture's calendar.
    assert not re.search(r"ToString\('[yMdHm]", code), "a culture-dependent date pattern"


def test_install_script_accounts_gmsa_and_unattended() -> None:
    """A gMSA gets LogonType Password without a password, in the definition it is registered
    with; a service account's password comes from -Credential, and without one a
    non-interactive session fails instead of prompting."""
    install = INSTALL_PS1.read_text()
    assert re.search(r"^\s*\[pscredential\] \$Credential = \$null,$", install, re.MULTILINE)
    assert "$IsGmsa = (-not $IsSystem) -and $User.EndsWith('$')" in install
    gmsa = install.split("if ($IsGmsa) {\n", 1)[1].split("\n}", 1)[0]
    assert "<LogonType>Password</LogonType>" in gmsa
    assert "-Password" not in gmsa
    prompt = install.split("if ($null -eq $Credential) {", 1)[1].split("Get-Credential", 1)[0]
    assert "[Environment]::UserInteractive" in prompt and "throw" in prompt


def test_install_script_protects_the_data_folder() -> None:
    """The data folder's inherited entries are removed and only SYSTEM, Administrators and the
    task's account are granted; files already inside are reset to inherit that."""
    install = INSTALL_PS1.read_text()
    private = install.split("function Set-PrivateFolder", 1)[1].split("\n}\n", 1)[0]
    assert "$acl.SetAccessRuleProtection($true, $false)" in private
    assert "New-Object System.Security.AccessControl.DirectorySecurity" in private
    assert "Set-Acl -LiteralPath $path -AclObject $acl" in private
    contents = install.split("function Reset-FolderContents", 1)[1].split("\n}\n", 1)[0]
    assert "/reset /T" in contents
    assert "Set-PrivateFolder $DataDir" in install
    assert install.index("\nSet-PrivateFolder $DataDir") < install.index("\nReset-FolderContents")


def test_install_script_refuses_a_user_writable_executable_as_system() -> None:
    """Before registering, for every account (SYSTEM, a gMSA, a service account), the script
    checks the executable, its folder and every folder above for writers other than SYSTEM,
    Administrators and TrustedInstaller."""
    install = INSTALL_PS1.read_text()
    code = powershell_code(install)
    assert re.search(r"^Assert-OnlyAdministratorsCanReplace \$exe$", code, re.MULTILINE)
    assert code.index("\nAssert-OnlyAdministratorsCanReplace $exe") < code.index(
        "Register-ScheduledTask @register"
    )
    check = install.split("function Assert-OnlyAdministratorsCanReplace", 1)[1]
    assert "while ($parent)" in check and "throw" in check
    trusted = install.split("$TrustedSids = @(", 1)[1].split(")", 1)[0]
    sids = set(re.findall(r"'(S-[0-9-]+)'", trusted)) | {"S-1-5-18", "S-1-5-32-544"}
    if "$TrustedInstallerSid" in trusted:
        [named] = re.findall(r"^\$TrustedInstallerSid = '(S-[0-9-]+)'$", install, re.MULTILINE)
        sids.add(named)
    # SYSTEM, Administrators, CREATOR OWNER, TrustedInstaller; never Users or Authenticated Users.
    assert not sids & {"S-1-5-32-545", "S-1-5-11", "S-1-1-0"}
    assert "S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464" in sids


def test_install_script_takes_the_data_folder_before_trusting_it() -> None:
    """A data folder that exists must belong to SYSTEM or an administrator (a link is
    refused); Administrators become its owner before its permissions are set; only then is
    an existing environment.txt looked at, and kept only if an administrator owns it; the
    contents get the owner and permissions before the starter file is written."""
    code = powershell_code(INSTALL_PS1.read_text())
    main = code.split("\n$config = Join-Path $DataDir 'environment.txt'", 1)[1]
    steps = [
        "if (Test-Path -LiteralPath $DataDir) {\n    Assert-AdminOwned $DataDir\n}",
        "\nSet-AdminOwner $DataDir\n",
        "\nSet-PrivateFolder $DataDir\n",
        "\nAssert-NoLinkInside $DataDir\n",
        "if (Test-Path -LiteralPath $config) {\n    Assert-AdminOwned $config\n}",
        "\nReset-FolderContents $DataDir\n",
        "| Set-Content -LiteralPath $config",
        "Register-ScheduledTask @register",
    ]
    positions = [main.index(step) for step in steps]
    assert positions == sorted(positions), list(zip(steps, positions, strict=True))
    owner = code.split("function Set-AdminOwner", 1)[1].split("\n}\n", 1)[0]
    assert (
        "$acl.SetOwner([System.Security.Principal.SecurityIdentifier] $AdministratorsSid)" in owner
    )
    contents = code.split("function Reset-FolderContents", 1)[1].split("\n}\n", 1)[0]
    assert contents.index("/setowner") < contents.index("/reset")
    check = code.split("function Assert-AdminOwned", 1)[1].split("\n}\n", 1)[0]
    assert "ReparsePoint" in check and check.count('throw ("refusing to use ${path}:') == 3
    assert "$owner -notin (Get-AdminOwnerSids)" in check
    owners = code.split("function Get-AdminOwnerSids", 1)[1].split("\n}\n", 1)[0]
    assert "Get-LocalGroupMember -SID $AdministratorsSid" in owners
    # Never Users, Authenticated Users or Everyone among the accepted owners.
    assert not re.search(r"S-1-5-32-545|S-1-5-11|S-1-1-0", owners)


def test_install_script_registers_once_with_the_final_principal() -> None:
    """The task is registered exactly once, with the account it will run as (a gMSA in the
    definition itself), never as SYSTEM first and changed after; a failed registration
    removes a task that this run created."""
    code = powershell_code(INSTALL_PS1.read_text())
    assert code.count("Register-ScheduledTask") == 1
    assert "Set-ScheduledTask" not in code and "New-ScheduledTaskPrincipal" not in code
    assert "'__USER__'     = $User\n" in code
    register = code.split("$existed = ", 1)[1]
    assert "try {\n    Register-ScheduledTask @register | Out-Null\n} catch {" in register
    failure = register.split("} catch {", 1)[1].split("\n}\n", 1)[0]
    assert "if (-not $existed -and (Get-ScheduledTask -TaskName $TaskName" in failure
    assert "Unregister-ScheduledTask -TaskName $TaskName -Confirm:$false" in failure
    assert "throw " in failure


def test_task_xml_for_a_gmsa_is_valid_with_its_logon_type() -> None:
    """The template filled as the script fills it for a gMSA: one principal, the gMSA with
    LogonType Password, in the schema's order, and no password anywhere."""
    install = INSTALL_PS1.read_text()
    [insertion] = re.findall(r"\$xml = \$xml\.Replace\('</UserId>', \"([^\"]+)\"\)", install)
    xml = TASK_XML.read_text()
    for key, value in {
        "__EXE__": r"C:\Program Files\TrackSSL\trackssl-agent.exe",
        "__CONFIG__": r"C:\ProgramData\TrackSSL\environment.txt",
        "__LOG_FILE__": r"C:\ProgramData\TrackSSL\logs\trackssl-agent.log",
        "__WORKDIR__": r"C:\ProgramData\TrackSSL",
        "__USER__": "CORP\\svc-trackssl$",
        "__START__": "2026-11-27T00:00:00",
    }.items():
        xml = xml.replace(key, value)
    xml = xml.replace("</UserId>", insertion.replace("`r`n", "\r\n"))
    root = ET.fromstring(xml.encode())  # noqa: S314 - our own template, filled here
    [principal] = root.findall("t:Principals/t:Principal", TASK_NS)
    children = [child.tag.split("}")[1] for child in principal]
    assert children == ["UserId", "LogonType", "RunLevel"]
    assert text(root, "t:Principals/t:Principal/t:UserId") == "CORP\\svc-trackssl$"
    assert text(root, "t:Principals/t:Principal/t:LogonType") == "Password"
    assert "<Password>" not in xml


# --- systemd ------------------------------------------------------------------------------


def test_every_unit_key_has_a_known_systemd_version() -> None:
    """Each key of the units, the timer and the drop-in appears in SYSTEMD_SINCE."""
    paths = sorted(LINUX.iterdir())
    assert {*SERVICES, "trackssl-agent-check.timer", DROP_IN.name} <= {p.name for p in paths}
    for path in paths:
        keys = unit_keys(path)
        assert keys, f"{path.name} has no keys"
        for key, value in keys:
            needs(key, value)


def test_main_units_need_nothing_newer_than_systemd_239() -> None:
    """RHEL 8's systemd 239 knows every key (and value) of the units and the timer, so it
    logs no "Unknown lvalue" and applies all of them."""
    paths = sorted(LINUX.glob("trackssl-agent*"))
    assert {*SERVICES, "trackssl-agent-check.timer"} <= {p.name for p in paths}
    for path in paths:
        assert unit_keys(path), f"{path.name} has no keys"
        too_new = [
            f"{key}={value} ({needs(key, value)})"
            for key, value in unit_keys(path)
            if needs(key, value) > OLDEST_SYSTEMD
        ]
        assert too_new == [], f"{path.name}: {too_new}"


def test_newer_hardening_is_in_the_drop_in() -> None:
    """The keys newer than 239 live in a drop-in for systemd 245+, and only there."""
    section = parse_unit(DROP_IN)
    assert list(section) == ["Service"]
    assert {key: one(section["Service"], key) for key in section["Service"]} == NEWER_HARDENING
    assert all(OLDEST_SYSTEMD < needs(key, value) <= 245 for key, value in unit_keys(DROP_IN))
    assert "systemd 245" in DROP_IN.read_text()


def test_systemd_units_are_hardened() -> None:
    """Both services run as the dedicated user with the hardening keys set."""
    for name in SERVICES:
        service = unit(name)["Service"]
        for key, value in HARDENING.items():
            assert one(service, key) == value, f"{name}: {key}"
        # cffi under cryptography needs writable+executable memory.
        assert "MemoryDenyWriteExecute" not in service
        assert "DynamicUser" not in service  # a static user owns the config file


def test_systemd_units_let_the_agent_read_its_own_file() -> None:
    """No EnvironmentFile= (systemd's dialect keeps trailing comments, rejects a BOM): the
    agent gets --config, and the unit's Environment= sets the state dir, which beats the file."""
    for name in SERVICES:
        service = unit(name)["Service"]
        assert "EnvironmentFile" not in service, name
        assert one(service, "ExecStart").endswith(f" --config {CONFIG}"), name
        assert environment(service) == {
            "TRACKSSL_STATE_DIR": "%S/trackssl-agent",
            "TMPDIR": UNPACK_DIR,
        }, name


def test_units_unpack_the_single_file_in_an_executable_cache_dir() -> None:
    """Every service gives the single file a folder of its own to unpack into: TMPDIR in its
    CacheDirectory= under /var/cache (0700), outside /tmp, /var/tmp, /dev/shm and /run,
    which hardened hosts (and Debian's /run) mount noexec."""
    for name in (*SERVICES, "trackssl-agent-textfile.service"):
        service = unit(name)["Service"]
        tmpdir = environment(service)["TMPDIR"]
        assert tmpdir == UNPACK_DIR, name
        assert one(service, "CacheDirectory") == "trackssl-agent", name
        assert one(service, "CacheDirectoryMode") == "0700", name
        assert f"/var/cache/{one(service, 'CacheDirectory')}" == tmpdir, name
        assert not tmpdir.startswith(("/tmp/", "/var/tmp/", "/dev/shm/", "/run/")), name
        assert "RuntimeDirectory" not in service, name


def test_unit_command_reads_the_file_and_keeps_the_state_dir(tmp_path: Path) -> None:
    """The unit's own command line and Environment=, given a Notepad-style file (BOM, CRLF,
    comments after values, export) that names another state dir: the agent parses the file
    and the state dir stays the unit's (process environment beats the file)."""
    token = "tsk_unit_7Hq2Lm"  # noqa: S105 - a test-only token
    config = tmp_path / "environment.txt"
    config.write_bytes(
        b"\xef\xbb\xbf# written by Notepad\r\n"
        + f"TRACKSSL_AUTH_TOKEN={token} # from the dashboard\r\n".encode()
        + b"export TRACKSSL_AGENT_TOKEN='agt_unit'\r\n"
        + f"TRACKSSL_STATE_DIR={tmp_path / 'elsewhere'}\r\n".encode()
    )
    config.chmod(0o600)
    state_root = tmp_path / "var-lib"  # what %S expands to (/var/lib for system units)
    service = unit("trackssl-agent.service")["Service"]
    value = environment(service)["TRACKSSL_STATE_DIR"]
    env = agent_environ(TRACKSSL_STATE_DIR=value.replace("%S", str(state_root)))
    # The unit's command with `config` (which prints the effective values) in place of `run`.
    argv = one(service, "ExecStart").split()
    assert argv[:2] == [EXE, "run"]
    argv = [sys.executable, "-m", "trackssl_agent", "config", *argv[2:]]
    argv[argv.index(CONFIG)] = str(config)
    result = subprocess.run(
        argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert str(state_root / "trackssl-agent") in rows["TRACKSSL_STATE_DIR"]
    assert "[$TRACKSSL_STATE_DIR]" in rows["TRACKSSL_STATE_DIR"]
    assert f"[REDACTED] ({len(token)} characters)" in rows["TRACKSSL_AUTH_TOKEN"]
    assert "agt_unit" in rows["TRACKSSL_AGENT_TOKEN"]
    assert token not in result.stdout + result.stderr


def test_systemd_run_service_and_check_timer() -> None:
    """run restarts on failure except exit 3; the timer starts check-once every 4 h, catching up."""
    run = unit("trackssl-agent.service")
    assert one(run["Service"], "ExecStart") == f"{EXE} run --config {CONFIG}"
    assert one(run["Service"], "RestartPreventExitStatus") == "3"
    # A clean stop takes at most --timeout (10 s) plus a few seconds.
    assert int(one(run["Service"], "TimeoutStopSec")) >= 30
    assert one(run["Install"], "WantedBy") == "multi-user.target"
    check = unit("trackssl-agent-check.service")
    assert one(check["Service"], "Type") == "oneshot"
    assert one(check["Service"], "ExecStart") == f"{EXE} check-once --config {CONFIG}"
    assert "Install" not in check  # started by the timer only
    timer = unit("trackssl-agent-check.timer")["Timer"]
    assert one(timer, "OnCalendar") == "*-*-* 00/4:00:00"
    assert one(timer, "Persistent") == "true"
    assert one(timer, "RandomizedDelaySec") == "10min"
    assert one(timer, "Unit") == "trackssl-agent-check.service"


def test_docs_create_the_units_user_and_paths() -> None:
    """The deployment guide creates the user the units run as, and names the units' config
    path and the drop-in; neither it nor the README names an old config path."""
    guide = DEPLOYMENT.read_text()
    assert re.search(rf"useradd --system [^\n]*\b{USER}\n", guide)
    assert CONFIG in guide
    assert "hardening-systemd245.conf" in guide
    for text_ in (guide, (ROOT / "README.md").read_text()):
        assert "/etc/trackssl/" not in text_


def stage_units(target: Path, *, with_drop_in: bool) -> list[str]:
    """Copy the units to ``target`` with an executable that exists; the drop-in optional."""
    for source in LINUX.glob("trackssl-agent*"):
        (target / source.name).write_text(source.read_text().replace(EXE, "/bin/true"))
    if with_drop_in:
        for name in SERVICES:
            folder = target / f"{name}.d"
            folder.mkdir()
            shutil.copy(DROP_IN, folder / "hardening.conf")
    return sorted(str(path) for path in target.glob("trackssl-agent*") if path.is_file())


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    """systemd itself finds no unknown key or bad value in the three units; on systemd 245+
    with the newer-hardening drop-in too."""
    analyze = systemd_analyze()
    version = systemd_version(analyze)
    assert version >= OLDEST_SYSTEMD
    names = stage_units(tmp_path, with_drop_in=version >= 245)
    assert len(names) >= len(SERVICES) + 1  # the services and the timer at least
    result = subprocess.run(
        [analyze, "verify", *names], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


def test_systemd_knows_every_key_the_version_table_says_it_knows(tmp_path: Path) -> None:
    """Each key of SYSTEMD_SINCE that the local systemd should know, in a unit of its own,
    verifies without "Unknown": the table has no misspelt key."""
    analyze = systemd_analyze()
    version = systemd_version(analyze)
    service = {
        key: value
        for key, value in {**HARDENING, **NEWER_HARDENING}.items()
        if needs(key, value) <= version
    }
    body = "[Unit]\nDescription=t\n[Service]\nExecStart=/bin/true\n"
    body += "".join(f"{key}={value}\n" for key, value in service.items())
    (tmp_path / "probe-keys.service").write_text(body)
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / "probe-keys.service")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert "Unknown" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stderr


# --- launchd ------------------------------------------------------------------------------


def plist() -> dict[str, object]:
    """The parsed launchd plist."""
    with PLIST.open("rb") as f:
        loaded: dict[str, object] = plistlib.load(f)
    return loaded


def test_launchd_plist_runs_check_once_every_four_hours() -> None:
    """A valid plist: check-once with a config, six calendar fires a day (kept across sleep)."""
    job = plist()
    assert job["Label"] == "com.trackssl.agent"
    arguments = job["ProgramArguments"]
    assert isinstance(arguments, list)
    assert arguments[3:7] == [EXE, "check-once", "--config", arguments[6]]
    assert arguments[6].endswith("/environment.txt")
    assert "StartInterval" not in job  # its fires are lost while the Mac sleeps
    calendar = job["StartCalendarInterval"]
    assert isinstance(calendar, list)
    assert sorted(entry["Hour"] for entry in calendar) == [0, 4, 8, 12, 16, 20]
    assert job["WorkingDirectory"]
    env = job["EnvironmentVariables"]
    assert isinstance(env, dict) and env["TRACKSSL_STATE_DIR"]


def test_launchd_log_does_not_grow_without_end() -> None:
    """The agent logs to its own rotating file; launchd's stdout/stderr file has a newsyslog
    entry that rotates it by size."""
    job = plist()
    arguments = job["ProgramArguments"]
    assert isinstance(arguments, list)
    log_file = arguments[arguments.index("--log-file") + 1]
    assert log_file.startswith("/Library/Logs/")
    assert job["StandardOutPath"] == job["StandardErrorPath"]
    entries = [
        line.split()
        for line in NEWSYSLOG.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # logfilename [owner:group] mode count size(KB) when flags
    [[path, owner, mode, count, size, when, flags]] = entries
    assert path == job["StandardOutPath"]
    assert owner == "root:wheel" and re.fullmatch(r"[0-7]{3}", mode)
    assert 0 < int(count) <= 10 and 0 < int(size) <= 10240 and when == "*"
    assert "N" in flags  # no process to signal: launchd reopens the file at each run


def test_launchd_random_delay_then_exec_with_arguments_intact(tmp_path: Path) -> None:
    """The plist's shell prefix sleeps a bounded random time, then execs the agent with every
    argument intact (spaces in "Application Support" included)."""
    arguments = plist()["ProgramArguments"]
    assert isinstance(arguments, list)
    shell, flag, script = arguments[:3]
    assert (shell, flag) == ("/bin/sh", "-c")
    match = re.search(r"% (\d+) \)\)", script)
    assert match and 0 < int(match.group(1)) <= 600  # at most 10 minutes, like the timer
    if not Path("/bin/sh").exists():
        pytest.skip("no /bin/sh")
    # The same script with the wait cut to under a second, running a recorder as the agent.
    recorder = tmp_path / "argv.txt"
    fast = script.replace(f"% {match.group(1)} ))", "% 1 ))")
    result = subprocess.run(
        [shell, flag, fast, sys.executable, "-c",
         "import sys, pathlib; pathlib.Path(sys.argv[1]).write_text('\\n'.join(sys.argv[2:]))",
         str(recorder), *arguments[4:]],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert recorder.read_text().split("\n") == arguments[4:]


# --- Docker -------------------------------------------------------------------------------


def dockerfile() -> list[str]:
    """The Dockerfile's instructions (continuation lines joined, comments dropped)."""
    instructions: list[str] = []
    pending = ""
    for raw in (DOCKER / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line}".strip()
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        instructions.append(pending)
        pending = ""
    assert pending == "", "a continuation line runs off the end"
    return instructions


def test_dockerfile_runs_the_daemon_as_non_root() -> None:
    """The image runs ``trackssl-agent run`` as an unprivileged user with a state volume."""
    instructions = dockerfile()
    assert 'ENTRYPOINT ["trackssl-agent"]' in instructions
    assert 'CMD ["run"]' in instructions
    assert "USER 10001" in instructions
    assert any(line.startswith("VOLUME") for line in instructions)
    assert "STOPSIGNAL SIGTERM" in instructions


DEBIAN_RELEASES = {"bookworm": "Debian 12", "trixie": "Debian 13"}


def test_dockerfile_base_image_is_pinned_by_digest() -> None:
    """Every FROM resolves to a python:3.12-slim tag that names its Debian release, pinned
    by a sha256 digest; the Dockerfile, the deployment guide and the workflow's check of the built
    image all name that release."""
    instructions = dockerfile()
    [arg] = [line for line in instructions if line.startswith("ARG PYTHON_IMAGE=")]
    image = arg.split("=", 1)[1]
    match = re.fullmatch(r"python:3\.12-slim-(\w+)@sha256:[0-9a-f]{64}", image)
    assert match and match.group(1) in DEBIAN_RELEASES, image
    release = DEBIAN_RELEASES[match.group(1)]
    froms = [line.split()[1] for line in instructions if line.startswith("FROM ")]
    assert froms and all(name == "${PYTHON_IMAGE}" for name in froms), froms
    header = (DOCKER / "Dockerfile").read_text().split("ARG PYTHON_IMAGE", 1)[0]
    guide = DEPLOYMENT.read_text().split("\n## Docker\n", 1)[1].split("\n## ", 1)[0]
    for text_ in (header, guide):
        assert f"python:3.12-slim-{match.group(1)}" in text_
        assert re.findall(r"Debian \d+", text_) == [release]
    build_yml = (ROOT / ".github" / "workflows" / "build.yml").read_text()
    assert f"/etc/debian_version | grep -q '^{release.split()[1]}\\.'" in build_yml


def test_dockerfile_installs_the_hashed_lock() -> None:
    """The image's dependencies are the lock's wheels, each checked against its hash, and
    the agent is built without resolving anything else (no dependency from the index)."""
    instructions = dockerfile()
    runs = [line for line in instructions if line.startswith("RUN ")]
    download = next(line for line in runs if "pip download" in line)
    for flag in ("--require-hashes", "--only-binary :all:", "-r requirements-build.txt"):
        assert flag in download, flag
    assert "COPY build/requirements-build.txt ./" in instructions
    wheel = next(line for line in runs if "pip wheel" in line)
    assert "--no-deps" in wheel and "--no-build-isolation" in wheel
    installs = [part for line in runs for part in line.split("&&") if "pip install" in part]
    assert installs and all("--no-index" in part for part in installs), installs


def test_compose_token_file_is_gitignored(tmp_path: Path) -> None:
    """build/docker/environment.txt, where the compose file's tokens go, is never committed."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    result = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "--no-index", "build/docker/environment.txt"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, "build/docker/environment.txt is not gitignored"


def test_container_stop_grace_and_restart_policy() -> None:
    """The documented docker run and the compose file give the agent longer than a probe's
    timeout to stop, and a restart policy that gives up (exit 3 would otherwise loop)."""
    header = (DOCKER / "Dockerfile").read_text()
    assert "--restart on-failure:5 --stop-timeout 30" in header
    compose = (DOCKER / "compose.yaml").read_text()
    settings = dict(
        line.strip().split(": ", 1)
        for line in compose.splitlines()
        if re.match(r"^    [a-z_]+: \S", line)
    )
    assert settings["restart"] == "on-failure:5"
    grace = re.fullmatch(r"(\d+)s", settings["stop_grace_period"])
    assert grace and int(grace.group(1)) >= 10 + 15
    assert settings["stop_signal"] == "SIGTERM"
    docs = (ROOT / "README.md").read_text() + DEPLOYMENT.read_text()
    assert "--restart unless-stopped" not in docs
    assert "--stop-timeout 30" in DEPLOYMENT.read_text()


# --- Windows version resource ---------------------------------------------------------------


def test_windows_version_resource_carries_the_package_version(tmp_path: Path) -> None:
    """The generated version file is one Python expression carrying __version__ in its numbers
    and strings."""
    generator = load_module(BUILD / "windows" / "version_info.py")
    path = Path(generator.write(tmp_path / "version-info.txt"))
    numbers = (*(int(part) for part in __version__.split(".")[:3]), 0)
    tree = ast.parse(path.read_text(encoding="utf-8"), mode="eval")
    strings: dict[object, object] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "StringStruct":
            name, value = node.args
            assert isinstance(name, ast.Constant) and isinstance(value, ast.Constant)
            strings[name.value] = value.value
    assert strings["ProductVersion"] == strings["FileVersion"] == __version__
    assert strings["OriginalFilename"] == "trackssl-agent.exe"
    assert f"filevers={numbers}," in path.read_text()
    assert generator.numbers("2.10.3rc1+local") == (2, 10, 3, 0)


@pytest.mark.skipif(
    sys.platform != "win32",
    reason="PyInstaller's version-resource reader imports pefile and win32api: Windows only",
)
def test_windows_version_resource_loads_in_pyinstallers_reader(tmp_path: Path) -> None:
    """PyInstaller's own reader loads the generated version file with __version__ in its
    fixed numbers and its ProductVersion string."""
    from PyInstaller.utils.win32 import versioninfo  # noqa: PLC0415 - Windows only

    generator = load_module(BUILD / "windows" / "version_info.py")
    path = Path(generator.write(tmp_path / "version-info.txt"))
    numbers = (*(int(part) for part in __version__.split(".")[:3]), 0)
    info = versioninfo.load_version_info_from_text_file(str(path))
    assert (info.ffi.fileVersionMS >> 16, info.ffi.fileVersionMS & 0xFFFF) == numbers[:2]
    assert (info.ffi.fileVersionLS >> 16, info.ffi.fileVersionLS & 0xFFFF) == numbers[2:]
    loaded = {s.name: s.val for s in info.kids[0].kids[0].kids}
    assert loaded["ProductVersion"] == __version__


def test_spec_adds_the_version_resource_on_windows_only() -> None:
    """pyinstaller.spec generates the version file under sys.platform == "win32" and hands it
    to both executables."""
    spec = (ROOT / "pyinstaller.spec").read_text()
    block = spec.split('if sys.platform == "win32":\n', 1)[1].split("\ncommon = dict(", 1)[0]
    assert "version_info.write(" in block
    assert "version=version_file," in spec.split("common = dict(", 1)[1].split("\n)", 1)[0]


# --- CI and release ---------------------------------------------------------------------

WORKFLOWS = ROOT / ".github" / "workflows"


def shell_words(command: str) -> list[str]:
    """The words of a shell command with its line continuations joined."""
    return command.replace("\\\n", " ").split()


def test_clean_runner_installs_the_shared_libpython() -> None:
    """The CI test job (Debian 12's python3) and the README's test command install
    libpython3.11: PyInstaller needs Debian's shared libpython, which a clean runner lacks."""
    ci = (WORKFLOWS / "ci.yml").read_text()
    test_job = ci.split("\n  test:\n", 1)[1].split("\n  packaging-systemd-239:", 1)[0]
    assert re.search(r"container:\n\s+image: debian:12\n", test_job), test_job
    [install] = re.findall(r"apt-get install ((?:\\\n|[^\n])+)", test_job)
    assert "libpython3.11" in shell_words(install)
    servers = (ROOT / "scripts" / "install-servers.sh").read_text()
    packages = servers.split("PACKAGES=(", 1)[1].split(")", 1)[0]
    assert "libpython3.11" in packages.split()
    # The tools the native package tests use (dpkg-deb comes with dpkg).
    assert {"rpm", "lintian"} <= set(packages.split())


def test_workflows_pin_actions_by_commit_and_python_by_patch() -> None:
    """Every action is pinned by a full commit SHA (its tag in a comment); the build
    interpreter by its patch release, and uv by its version."""
    for path in sorted(WORKFLOWS.glob("*.yml")):
        for action in re.findall(r"uses: (\S+)", path.read_text()):
            if action.startswith("./"):
                continue
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", action), f"{path.name}: {action}"
    build = (WORKFLOWS / "build.yml").read_text()
    assert re.search(r'^  PYTHON_VERSION: "3\.\d+\.\d+"$', build, re.MULTILINE)
    assert re.search(r'^  UV_VERSION: "\d+\.\d+\.\d+"$', build, re.MULTILINE)
    assert 'pip install --quiet "uv==$UV_VERSION"' in build
    assert build.count("python-version: ${{ env.PYTHON_VERSION }}") == 2  # macOS, Windows
    assert '"$uv" python install "$PYTHON_VERSION"' in build


def test_release_asks_each_binary_which_openssl_it_uses() -> None:
    """Each platform's job asks both builds (--version --verbose) which OpenSSL their ssl
    module uses and which Python they carry, instead of looking for any OpenSSL string."""
    build = (WORKFLOWS / "build.yml").read_text()
    assert "grep -rqaE" not in build
    jobs = {}
    for job in ("linux", "macos", "windows"):
        body = build.split(f"\n  {job}:\n", 1)[1]
        body = re.split(r"\n  [a-z]+:\n", body, maxsplit=1)[0]
        jobs[job] = body
        assert "--version --verbose" in body, job
        assert "openssl OpenSSL 3\\." in body, job
        assert "python $PYTHON_VERSION (CPython)" in body or (
            "python $env:PYTHON_VERSION (CPython)" in body
        ), job
    assert "trackssl-agent-folder" in jobs["windows"].split("--version --verbose", 1)[0]


def test_release_builds_lints_and_installs_the_packages() -> None:
    """Each Linux architecture's single file goes into a .deb and an .rpm, built from
    build/packages/; lintian may find no error; the .deb is installed, run and purged by
    tests/packaging/test_native_packages.py; the packages are uploaded with the other files."""
    build = (WORKFLOWS / "build.yml").read_text()
    job = build.split("\n  packages:\n", 1)[1].split("\n  docker:\n", 1)[0]
    assert "needs: linux" in job
    assert "scripts/build-packages.py --binary" in job
    assert "lintian --fail-on error" in job and "rpmlint" in job
    assert "pytest -p no:cacheprovider tests/packaging/test_native_packages.py" in job
    assert {"x86_64", "aarch64"} <= set(re.findall(r"arch: (\w+)", job))
    assert "name: packages-${{ matrix.arch }}" in job
    release = (WORKFLOWS / "release.yml").read_text()
    assert "merge-multiple: true" in release


# --- README and docs/ ------------------------------------------------------------------------

DOC_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
"""Every page that shows commands to run."""


def test_readme_commands_work_where_they_are_meant_to_run() -> None:
    """In the README and every docs/ page: sudo -u names the full path (RHEL's secure_path
    lacks /usr/local/bin); PowerShell scripts run with -ExecutionPolicy Bypass (Restricted is
    the default). In the deployment guide: the Mac install makes /usr/local/bin first;
    uninstall blocks do not fail on what is not installed."""
    assert len(DOC_PAGES) >= 5
    for page in DOC_PAGES:
        text_ = page.read_text()
        for match in re.finditer(r"sudo -u \S+ (?:env (?:\S+=\S+ )+)?(\S+)", text_):
            assert match.group(1).startswith("/"), f"{page.name}: {match.group(0)}"
        for line in text_.splitlines():
            if re.search(r"powershell(\.exe)? .*-File", line):
                assert "-ExecutionPolicy Bypass" in line, f"{page.name}: {line}"
            if re.search(r"(^|`)\.\\\S+\.ps1", line):
                raise AssertionError(f"{page.name}: a script started without Bypass: {line}")
        if "install -m 0755 trackssl-agent-macos" in text_:
            install = text_.index("install -m 0755 trackssl-agent-macos-arm64 /usr/local/bin/")
            assert "install -d -m 0755 /usr/local/bin" in text_[:install], page.name
    guide = DEPLOYMENT.read_text()
    for section in ("## Linux", "## macOS"):
        text_ = guide.split(f"\n{section}\n", 1)[1].split("\n## ", 1)[0]
        block = text_.split("Uninstall", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
        for line in block.splitlines():
            words = line.split()
            if "rm" in words:
                assert "-f" in words or "-rf" in words, line
            if ("systemctl" in words and "disable" in words) or "bootout" in words:
                assert "|| true" in line, line


def test_readme_install_section_starts_with_the_packages() -> None:
    """Linux, in the README's install section and the deployment guide: the .deb and .rpm
    first, then the bare binary; the file names the release publishes are those
    build-packages.py writes."""
    readme = (ROOT / "README.md").read_text()
    install = readme.split("\n## Install\n", 1)[1].split("\n## ", 1)[0]
    linux = DEPLOYMENT.read_text().split("\n## Linux\n", 1)[1].split("\n## ", 1)[0]
    for text_, binary in ((install, "### The release binary"), (linux, "**The single file.**")):
        assert text_.index(".deb") < text_.index(binary)
        assert text_.index(".rpm") < text_.index(binary)
        for name in ("trackssl-agent_amd64.deb", "trackssl-agent.x86_64.rpm"):
            assert f'"$base/{name}"' in text_[: text_.index(binary)]
    script = (ROOT / "scripts" / "build-packages.py").read_text()
    assert "f\"{pkg['name']}_{pkg.deb_arch}.deb\"" in script
    assert '"%{NAME}.%{ARCH}.rpm"' in script


def test_scripts_named_in_the_docs_exist() -> None:
    """Every scripts/... file that the README, docs/, ARCHITECTURE.md and the CHANGELOG name
    is in the repository."""
    pages = [*DOC_PAGES, ROOT / "ARCHITECTURE.md", ROOT / "CHANGELOG.md"]
    for doc in pages:
        named = set(re.findall(r"scripts/[\w.-]+\.(?:py|sh|ps1)", doc.read_text()))
        missing = sorted(name for name in named if not (ROOT / name).exists())
        assert missing == [], f"{doc.name}: {missing}"


def test_frozen_build_inputs_cover_every_build_file() -> None:
    """The frozen tests rebuild when any file the build reads changes: the package, the
    hooks, the Windows version resource, the spec, the lock and both build scripts."""
    from tests.frozen_builds import build_inputs  # noqa: PLC0415 - the helper under test

    inputs = {path.relative_to(ROOT).as_posix() for path in build_inputs()}
    expected = {
        "pyinstaller.spec", "pyproject.toml", "build/requirements-build.txt",
        "build/windows/version_info.py", "scripts/build-binary.sh", "scripts/build-binary.ps1",
        *(path.relative_to(ROOT).as_posix() for path in (BUILD / "hooks").glob("*.py")),
        "trackssl_agent/cli/table.py",
    }  # fmt: skip
    assert expected <= inputs, sorted(expected - inputs)


# --- links ----------------------------------------------------------------------------------


def test_no_reference_to_missing_docs() -> None:
    """No shipped file points at docs/platforms.md, a page that never existed (the platforms
    are in docs/deployment.md)."""
    shipped = [*BUILD.rglob("*"), *(ROOT / "scripts").glob("*.ps1"), *DOC_PAGES]
    assert LINUX / SERVICES[0] in shipped
    assert INSTALL_PS1 in shipped
    offenders = [
        str(path.relative_to(ROOT))
        for path in shipped
        if path.is_file() and path.suffix != ".pyc" and "docs/platforms.md" in path.read_text()
    ]
    assert offenders == []


def test_the_license_is_an_spdx_expression() -> None:
    """pyproject declares the license the way setuptools 77+ wants it (an SPDX string and
    the file), with no License classifier: the deprecated forms warn on every install."""
    import tomllib  # noqa: PLC0415 - only here

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["license"] == "MIT"
    assert project["project"]["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").is_file()
    assert not [c for c in project["project"]["classifiers"] if c.startswith("License ::")]
    assert "setuptools>=77" in project["build-system"]["requires"][0]


def test_building_the_package_warns_of_nothing_deprecated(tmp_path: Path) -> None:
    """``pip wheel .`` (what ``pip install .`` runs), verbose so that setuptools' own output
    shows: no deprecation warning."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-v",
         "--wheel-dir", str(tmp_path)],
        env=agent_environ(), capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert "adding license file 'LICENSE'" in output  # setuptools' output is in view
    assert [line for line in output.splitlines() if "deprecat" in line.lower()] == []
