"""The commands of the group, by name, without click: ``--version`` and ``--help`` on a
terminal of 80 columns or more are answered from here before click is imported (50 ms in a
venv, over 100 ms in the frozen builds). ``render_group_help`` writes what click writes;
``tests/cli/test_cli_group.py`` compares the two.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Sequence
from typing import NamedTuple

from trackssl_agent import __version__

VERSION_LINE = f"trackssl-agent {__version__}"
"""``--version``'s output (SPEC section 2); the group's version option prints the same."""

VERBOSE_FLAGS = frozenset({"--verbose", "-v"})
"""With ``--version``, either asks for ``version_report``."""

GROUP_HELP = "Watch the TLS certificates of servers inside a private network for TrackSSL."
"""The group's description in ``--help``."""

_OPTIONS = (
    ("--version", "Show the version and exit."),
    ("-h, --help", "Show this message and exit."),
)
_WIDTH = 78
"""click's help width on any terminal of 80 columns or more (its default maximum, less 2)."""


class Entry(NamedTuple):
    """One command of the group: where it lives and its line in the group's help.

    A NamedTuple, not a dataclass: importing ``dataclasses`` costs ``--version`` 13 ms.
    """

    module: str
    attribute: str
    summary: str


COMMANDS: dict[str, Entry] = {
    "check-once": Entry(
        "trackssl_agent.cli.cycle_commands", "check_once",
        "Run exactly one cycle, then exit: for cron, CI and the Task Scheduler.",
    ),
    "config": Entry(
        "trackssl_agent.cli.cycle_commands", "show_config",
        "Show the effective configuration, where each value comes from; the token redacted.",
    ),
    "discover": Entry(
        "trackssl_agent.cli.discover_command", "discover",
        "Find the TLS endpoints of NETWORK... and print them as a targets file for check-once.",
    ),
    "doctor": Entry(
        "trackssl_agent.cli.doctor_command", "doctor_command",
        "Check configuration, tokens, API connection, clock, state dir and engine, one line each.",
    ),
    "probe": Entry(
        "trackssl_agent.cli.probe_command", "probe",
        "Probe TARGET... now and show what each presents; never talks to the cloud.",
    ),
    "run": Entry(
        "trackssl_agent.cli.cycle_commands", "run",
        "Run cycles until stopped: one at once, then one every --interval.",
    ),
}  # fmt: skip
"""The commands, by name. Adding a command is one entry here and its module."""


def version_report() -> str:
    """``--version --verbose``: the version line, then the interpreter, the OpenSSL that the
    ``ssl`` module uses, the platform and the build form, one ``name value`` line each. It
    needs no configuration and no click: release checks ask a frozen build which OpenSSL it
    carries, and a support request quotes it."""
    import platform  # noqa: PLC0415 - only here, --version alone stays fast
    import ssl  # noqa: PLC0415

    lines = [
        VERSION_LINE,
        f"python {platform.python_version()} ({platform.python_implementation()})",
        f"openssl {ssl.OPENSSL_VERSION}",
        f"platform {platform.platform()} ({platform.machine()})",
        f"build {_build_form()}",
    ]
    return "\n".join(lines) + "\n"


def _build_form() -> str:
    """How this copy runs: a Python package, or a PyInstaller single file or folder build
    (told apart as ``doctor``'s engine line does: the bundle beside the executable is a
    folder build, one elsewhere was unpacked by a single file)."""
    if not getattr(sys, "frozen", False):
        return f"Python package in {sys.prefix}"
    from pathlib import Path  # noqa: PLC0415

    meipass = getattr(sys, "_MEIPASS", None)
    exe_dir = Path(sys.executable).resolve().parent
    if meipass is None or Path(meipass).resolve() in (exe_dir, exe_dir / "_internal"):
        return "folder"
    return "single file"


def render_group_help(columns: int) -> str | None:
    """The group's ``--help`` as click renders it, for a terminal ``columns`` wide; None
    below 80 columns, where click wraps to the terminal (let click do it then)."""
    if columns < _WIDTH + 2:
        return None
    lines = ["Usage: trackssl-agent [OPTIONS] COMMAND [ARGS]...", ""]
    lines += textwrap.wrap(
        GROUP_HELP, _WIDTH, initial_indent="  ", subsequent_indent="  ",
        replace_whitespace=False,
    )  # fmt: skip
    lines += ["", "Options:", *_definitions(_OPTIONS), "", "Commands:"]
    lines += _definitions([(name, COMMANDS[name].summary) for name in sorted(COMMANDS)])
    return "\n".join(lines) + "\n"


def _definitions(rows: Sequence[tuple[str, str]]) -> list[str]:
    """click's definition list: terms in a column (at most 30 wide), text wrapped beside."""
    first = min(max(len(term) for term, _text in rows), 30) + 2
    width = max(_WIDTH - first - 2, 10)
    out = []
    for term, text in rows:
        wrapped = textwrap.wrap(text, width, replace_whitespace=False) or [""]
        if len(term) <= first - 2:
            out.append(f"  {term}{' ' * (first - len(term))}{wrapped[0]}")
        else:
            out += [f"  {term}", f"{' ' * (first + 2)}{wrapped[0]}"]
        out += [f"{' ' * (first + 2)}{line}" for line in wrapped[1:]]
    return out
