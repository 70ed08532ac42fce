"""The unattended wrappers under build/: Task Scheduler XML, systemd units, launchd plist,
Dockerfile, and the install scripts that fill the task template."""

from __future__ import annotations

import plistlib
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build"
TASK_XML = BUILD / "windows" / "trackssl-agent-task.xml"
TASK_NS = {"t": "http://schemas.microsoft.com/windows/2004/02/mit/task"}
LINUX = BUILD / "linux"
PLIST = BUILD / "macos" / "com.trackssl.agent.plist"
EXE = "/usr/local/bin/trackssl-agent"

HARDENING = {
    "DynamicUser": "yes",
    "StateDirectory": "trackssl-agent",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "NoNewPrivileges": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "CapabilityBoundingSet": "",
    "SystemCallArchitectures": "native",
    "UMask": "0077",
}


def task() -> ET.Element:
    """The parsed task template (fails the test if it is not well-formed XML)."""
    return ET.parse(TASK_XML).getroot()  # noqa: S314 - our own file from the repository


def text(root: ET.Element, path: str) -> str:
    """The text of the one element at ``path`` (task namespace as ``t:``)."""
    found = root.findall(path, TASK_NS)
    assert len(found) == 1, f"{path}: {len(found)} elements"
    return (found[0].text or "").strip()


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file as {section: {key: [values]}} (keys may repeat, as in systemd)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate((LINUX / name).read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{name}:{number}: not KEY=VALUE in a section"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(section: dict[str, list[str]], key: str) -> str:
    """The single value of ``key``."""
    values = section.get(key, [])
    assert len(values) == 1, f"{key}: {values}"
    return values[0]


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
    triggers = list(root.find("t:Triggers", TASK_NS) or [])
    assert [t.tag.split("}")[1] for t in triggers] == ["TimeTrigger"]
    assert text(root, "t:Triggers/t:TimeTrigger/t:Repetition/t:Interval") == "PT4H"
    assert root.find("t:Triggers/t:TimeTrigger/t:Repetition/t:Duration", TASK_NS) is None
    assert text(root, "t:Triggers/t:TimeTrigger/t:Enabled") == "true"
    assert text(root, "t:Principals/t:Principal/t:UserId") == "__USER__"
    install = (ROOT / "scripts" / "install-windows-task.ps1").read_text()
    assert re.search(r"\[string\] \$User = 'S-1-5-18'", install), "SYSTEM is not the default"


def test_install_script_fills_every_placeholder_of_the_template() -> None:
    """The placeholders of the template and those the install script replaces are the same."""
    placeholders = set(re.findall(r"__[A-Z_]+__", TASK_XML.read_text()))
    install = (ROOT / "scripts" / "install-windows-task.ps1").read_text()
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


def test_systemd_units_are_hardened() -> None:
    """Both services run as a dynamic user with the hardening keys set."""
    for name in ("trackssl-agent.service", "trackssl-agent-check.service"):
        service = unit(name)["Service"]
        for key, value in HARDENING.items():
            assert one(service, key) == value, f"{name}: {key}"
        # cffi under cryptography needs writable+executable memory.
        assert "MemoryDenyWriteExecute" not in service
        assert one(service, "EnvironmentFile") == "/etc/trackssl-agent/environment.txt"
        assert one(service, "Environment") == "TRACKSSL_STATE_DIR=/var/lib/trackssl-agent"


def test_systemd_run_service_and_check_timer() -> None:
    """run restarts on failure except exit 3; the timer starts check-once every 4 h, catching up."""
    run = unit("trackssl-agent.service")
    assert one(run["Service"], "ExecStart") == f"{EXE} run"
    assert one(run["Service"], "RestartPreventExitStatus") == "3"
    assert one(run["Install"], "WantedBy") == "multi-user.target"
    check = unit("trackssl-agent-check.service")
    assert one(check["Service"], "Type") == "oneshot"
    assert one(check["Service"], "ExecStart") == f"{EXE} check-once"
    assert "Install" not in check  # started by the timer only
    timer = unit("trackssl-agent-check.timer")["Timer"]
    assert one(timer, "OnCalendar") == "*-*-* 00/4:00:00"
    assert one(timer, "Persistent") == "true"
    assert one(timer, "Unit") == "trackssl-agent-check.service"


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    """systemd itself finds no unknown key or bad value in the three units."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify wants the executable and the EnvironmentFile to exist.
    env_file = tmp_path / "environment.txt"
    env_file.write_text("TRACKSSL_AGENT_TOKEN=x\n")
    for source in LINUX.iterdir():
        body = source.read_text().replace(EXE, "/bin/true")
        body = body.replace("/etc/trackssl-agent/environment.txt", str(env_file))
        (tmp_path / source.name).write_text(body)
    names = sorted(str(tmp_path / s.name) for s in LINUX.iterdir())
    result = subprocess.run(
        [analyze, "verify", *names], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


def test_launchd_plist_runs_check_once_every_four_hours() -> None:
    """A valid plist: check-once with a config, six calendar fires a day (kept across sleep)."""
    with PLIST.open("rb") as f:
        plist = plistlib.load(f)
    assert plist["Label"] == "com.trackssl.agent"
    assert plist["ProgramArguments"][:2] == [EXE, "check-once"]
    assert plist["ProgramArguments"][2] == "--config"
    assert "StartInterval" not in plist  # its fires are lost while the Mac sleeps
    hours = sorted(entry["Hour"] for entry in plist["StartCalendarInterval"])
    assert hours == [0, 4, 8, 12, 16, 20]
    assert plist["WorkingDirectory"]
    assert plist["StandardErrorPath"].endswith(".log")
    assert plist["EnvironmentVariables"]["TRACKSSL_STATE_DIR"]


def test_dockerfile_runs_the_daemon_as_non_root() -> None:
    """The image runs ``trackssl-agent run`` as an unprivileged user with a state volume."""
    lines = (BUILD / "docker" / "Dockerfile").read_text().splitlines()
    instructions = [line for line in lines if line and not line.startswith(("#", " "))]
    assert 'ENTRYPOINT ["trackssl-agent"]' in instructions
    assert 'CMD ["run"]' in instructions
    assert "USER 10001" in instructions
    assert any(line.startswith("VOLUME") for line in instructions)
