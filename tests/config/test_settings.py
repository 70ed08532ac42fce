"""The settings table: every row reaches the command line's --help, the ``config`` output,
the defaults and the validation, so adding a setting is adding a row (and this file tests it)."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from tests.cli_helpers import run_cli
from trackssl_agent import cli
from trackssl_agent.cli import options
from trackssl_agent.config import config, settings
from trackssl_agent.config.settings import Kind, Spec
from trackssl_agent.errors import ConfigError

OPTIONED = [row for row in settings.SETTINGS if row.option]
COMMANDS = ("probe", "check-once", "run", "config")

# One value per kind that validation must refuse (DIR takes any path: see the control test).
BAD: dict[Kind, str] = {
    Kind.TOKEN: "two words",
    Kind.URL: "ftp://x",
    Kind.DURATION: "soon",
    Kind.INT: "many",
    Kind.SECONDS: "long",
    Kind.CHOICE: "loud",
    Kind.ALLOW: "a b/c",
    Kind.FILE: "missing.pem",
    Kind.LOG_FILE: ".",  # a directory
    Kind.BOOL: "maybe",
}


def _help_of_all_commands() -> str:
    runner = CliRunner()
    return "\n".join(runner.invoke(cli.cli, [name, "--help"]).output for name in COMMANDS)


@pytest.mark.parametrize("row", OPTIONED, ids=lambda row: row.name)
def test_every_option_row_is_in_help(row: Spec) -> None:
    """Each row with an option appears in some command's --help with its help text."""
    text = " ".join(_help_of_all_commands().split())
    assert f"{row.option} " in text
    assert " ".join(row.help.split())[:30] in text


def test_defaults_are_shown_from_the_table() -> None:
    """The help shows the table's defaults: timeout 10, concurrency 64, warn 30, crit 7."""
    text = " ".join(_help_of_all_commands().split())
    for name, default in [("timeout", "10"), ("concurrency", "64"), ("interval", "4h")]:
        assert settings.spec(name).default == default
        assert f"[default: {default}]" in text
    assert "[default: 30; x>=0]" in text
    assert "[default: 7; x>=0]" in text
    assert text.count("--config FILE") == 3  # run, check-once, config: one declaration


@pytest.mark.parametrize("row", settings.KEYED, ids=lambda row: row.name)
def test_every_keyed_row_is_in_config_output_with_its_default(
    row: Spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``config`` lists each keyed row, from ``default`` when nothing sets it."""
    for key in settings.BY_KEY:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    code, out, _err = run_cli(["config"], capsys)
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith(f"{row.key} "))
    assert line.endswith("[default]")
    if row.default:
        assert f" {row.default} " in line


def test_every_kind_has_a_refused_value() -> None:
    """Each kind but DIR has a value the validation below must refuse."""
    assert set(BAD) == set(Kind) - {Kind.DIR}


@pytest.mark.parametrize(
    "row", [row for row in settings.KEYED if row.kind in BAD], ids=lambda row: row.name
)
def test_every_keyed_row_is_validated(row: Spec, tmp_path: Path) -> None:
    """A bad value of each keyed row is a ConfigError naming its key and what is expected."""
    assert row.key is not None
    with pytest.raises(ConfigError, match=f"environment variable {row.key}: expected"):
        config.load(environ={row.key: BAD[row.kind]}, cwd=tmp_path)


@pytest.mark.parametrize("row", settings.KEYED, ids=lambda row: row.name)
def test_every_keyed_row_refuses_control_characters(row: Spec, tmp_path: Path) -> None:
    """No row accepts an escape sequence (DIR included); the value is not quoted back."""
    assert row.key is not None
    with pytest.raises(ConfigError, match="without NUL or other control") as caught:
        config.load(environ={row.key: "a\x1b[2Jb"}, cwd=tmp_path)
    assert "\x1b" not in str(caught.value)


@pytest.mark.parametrize("row", OPTIONED, ids=lambda row: row.name)
def test_an_option_out_of_bounds_is_refused(row: Spec) -> None:
    """Each option refuses a value outside its row's type or bounds (usage error)."""
    value = {Kind.DURATION: "5s", Kind.LOG_FILE: "."}.get(row.kind, "-1000000")
    args = {"warn_days": "probe", "crit_days": "probe", "ca_file": "probe"}.get(row.name, "run")
    command = [args, row.option or "", value] + (["h.example:443"] if args == "probe" else [])
    result = CliRunner().invoke(cli.cli, command)
    # click refuses typed options itself (exit 2 in CliRunner); config refuses the rest.
    assert result.exit_code != 0
    assert row.option is not None
    assert row.option in (result.output + str(result.exception))


def test_a_new_row_becomes_an_option(monkeypatch: pytest.MonkeyPatch) -> None:
    """A row added to the table is an option with its type, bounds, default and help:
    nothing else is written for it."""
    row = Spec("budget", None, "--budget", Kind.INT, "5", "Probes per minute.", low=1, high=9)
    monkeypatch.setitem(settings.BY_NAME, "budget", row)

    @click.command()
    @options.setting_option("budget")
    def command(budget: int) -> None:
        click.echo(f"budget={budget}")

    runner = CliRunner()
    help_text = " ".join(runner.invoke(command, ["--help"]).output.split())
    assert "--budget INTEGER RANGE Probes per minute. [default: 5; 1<=x<=9]" in help_text
    assert runner.invoke(command, []).output == "budget=5\n"
    assert runner.invoke(command, ["--budget", "10"]).exit_code == 2
