"""Options generated from the settings table, shared by the commands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from trackssl_agent.base import ascii_values
from trackssl_agent.config import settings
from trackssl_agent.config.settings import Kind
from trackssl_agent.engine import protocols
from trackssl_agent.errors import UsageError

F = TypeVar("F", bound=Callable[..., Any])


class _FilePath(click.Path):
    """A file path option that refuses a NUL byte (usage error, exit 3): ``os.stat``
    would raise ValueError on it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.name = "file"  # the metavar FILE, though a folder passes click's checks

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and "\0" in value:
            self.fail("expected a path without NUL characters", param, ctx)
        return super().convert(value, param, ctx)


FILE = _FilePath(path_type=Path, dir_okay=True, readable=False)
"""A path taken as given: whoever reads or writes it says in one line what is wrong with a
missing file, a folder or a file this user cannot read (click's checks would print its
usage block for some of these and the agent's line for others)."""


class AsciiIntRange(click.IntRange):
    """``click.IntRange`` for ASCII digits only: ``int()`` alone would take ``٣`` or
    ``1_0`` (see ``ascii_values``)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str):
            number = ascii_values.whole(value.strip())
            if number is None:
                self.fail(f"{value!r} is not a whole number (digits 0-9)", param, ctx)
            value = number
        return super().convert(value, param, ctx)


class AsciiFloatRange(click.FloatRange):
    """``click.FloatRange`` for ASCII decimals only (``2``, ``2.5``): ``float()`` alone
    would take other digits, ``inf`` and exponents."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str):
            number = ascii_values.decimal(value.strip())
            if number is None:
                self.fail(f"{value!r} is not a number such as 2 or 2.5", param, ctx)
            value = number
        return super().convert(value, param, ctx)


def _click_type(row: settings.Spec) -> click.ParamType[Any] | None:
    """The click type that checks a setting's bounds at the command line."""
    if row.kind is Kind.INT:
        low, high = (None if bound is None else int(bound) for bound in (row.low, row.high))
        return AsciiIntRange(low, high)
    if row.kind is Kind.SECONDS:
        return AsciiFloatRange(row.low, row.high)
    if row.kind is Kind.CHOICE:
        return click.Choice(row.choices)
    if row.kind in settings.PATH_KINDS:
        return FILE
    return None  # DURATION and the rest: text, checked by config with its own message


def setting_option(name: str, *, param: str | None = None) -> Callable[[F], F]:
    """The option of setting ``name``, generated from its row in ``settings.SETTINGS``.

    A setting the configuration also holds defaults to None here, so that the environment
    and the file can decide; its default is shown in the help instead.
    """
    row = settings.CONFIG if name == settings.CONFIG.name else settings.spec(name)
    if row.option is None:
        raise ValueError(f"setting {name} has no command-line option")
    keyed = row.key is not None
    if row.kind is Kind.BOOL:
        # A flag: absent is None, so that the environment and the file decide.
        return click.option(
            row.option, param or row.name, is_flag=True, default=None, help=row.help
        )
    shown = f" [default: {row.default}]" if keyed and row.default else ""
    return click.option(
        row.option,
        param or row.name,
        type=_click_type(row),
        default=None if keyed else settings.convert(row, row.default),
        show_default=not keyed,
        metavar="DURATION" if row.kind is Kind.DURATION else None,
        help=row.help + shown,
    )


def _stack(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """One decorator applying ``decorators`` so that options show in the order given."""

    def decorate(func: F) -> F:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return decorate


def setting_options(*names: str) -> Callable[[F], F]:
    """The options of several settings, in the order named."""
    return _stack(*(setting_option(name) for name in names))


config_option = setting_option(settings.CONFIG.name, param="config_path")
"""``--config``: declared once, for ``run``, ``check-once`` and ``config``."""


def family_option(func: F) -> F:
    """``-4`` / ``-6``: restrict addresses to one family."""
    func = click.option("-6", "--ipv6", "ipv6", is_flag=True, help="Only IPv6 addresses.")(func)
    return click.option("-4", "--ipv4", "ipv4", is_flag=True, help="Only IPv4 addresses.")(func)


FORMATS = ("text", "json", "openmetrics", "nagios")
"""``--format``'s choices: readable text, SPEC section 4 JSON, OpenMetrics for Prometheus, a
Nagios/Icinga plugin's status line (SPEC section 4a)."""


def output_format(*, as_json: bool, chosen: str | None) -> str:
    """The one format ``--json`` and ``--format`` ask for; UsageError when they disagree."""
    if as_json and chosen not in (None, "json"):
        raise UsageError(f"--json is short for --format json; it cannot go with --format {chosen}")
    return "json" if as_json else chosen or "text"


output_option = click.option(
    "--output",
    "output_path",
    type=FILE,
    help="Write the output to FILE instead of stdout, atomically (mode 0644).",
)
"""``--output FILE``: a reader of FILE sees the old or the new output whole."""


probe_options = _stack(
    setting_option("timeout"),
    family_option,
    click.option(
        "--format",
        "chosen_format",
        type=click.Choice(FORMATS),
        default=None,
        help="Output: text (the default), json (an array of one object per target), "
        "openmetrics (Prometheus) or nagios (a plugin's status line).",
    ),
    click.option("--json", "as_json", is_flag=True, help="Short for --format json."),
    setting_options("warn_days", "crit_days", "verify", "ca_file"),
    click.option(
        "--starttls",
        type=click.Choice(protocols.STARTTLS_CHOICES),
        default=protocols.AUTO,
        show_default=True,
        help="Dialogue before TLS: auto picks by scheme, then well-known port.",
    ),
)
"""Options shared by ``probe`` and ``check-once`` (SPEC section 2)."""


config_options = _stack(config_option, setting_options("log_level", "log_file", "log_format"))
"""``--config`` and the logging options of ``run`` and ``check-once`` (SPEC section 2)."""
