"""The command line: a click group whose commands are loaded only when they run.

This package is the only place that imports click; it may import every part, and only
``__main__`` imports it. Exit codes follow SPEC section 2; click's own usage errors exit 3,
not click's default 2. ``--version`` and the group's ``--help`` import no command: each
command's module (and the engine behind it) is imported when that command is named, and
``--version`` alone does not even import click. That keeps them fast in a venv and in the
frozen builds.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from trackssl_agent.cli.table import (
    VERBOSE_FLAGS,
    VERSION_LINE,
    render_group_help,
    version_report,
)
from trackssl_agent.errors import AgentError, ExitCode


def __getattr__(name: str) -> Any:
    # ``trackssl_agent.cli.cli`` (the click group) is loaded on first use, so that
    # ``--version`` never imports click.
    if name == "cli":
        from trackssl_agent.cli.group import cli  # noqa: PLC0415

        return cli
    raise AttributeError(name)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry: run the CLI and exit with the code ``report`` decides."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--version"]:
        # What click's version option prints, without click's imports: the line a support
        # request quotes, and what wrappers run to check an install.
        print(VERSION_LINE)
        sys.exit(ExitCode.OK)
    if len(args) == 2 and "--version" in args and set(args) - {"--version"} <= VERBOSE_FLAGS:
        # --version --verbose: which Python and OpenSSL this copy runs on, still without a
        # configuration or click (a release check asks the frozen build this).
        sys.stdout.write(version_report())
        sys.exit(ExitCode.OK)
    if args in (["--help"], ["-h"]):
        import shutil  # noqa: PLC0415 - only here

        text = render_group_help(shutil.get_terminal_size().columns)
        if text is not None:
            sys.stdout.write(text)
            sys.exit(ExitCode.OK)
    import click  # noqa: PLC0415 - see above

    from trackssl_agent.cli.group import cli  # noqa: PLC0415

    try:
        code = cli.main(args=argv, prog_name="trackssl-agent", standalone_mode=False)
    except click.ClickException as exc:  # click.UsageError included
        exc.show()
        sys.exit(_exit_code(exc, usage=exc.format_message()))
    except click.Abort:  # Ctrl-C while click was reading input
        click.echo("Aborted.", err=True)
        sys.exit(_exit_code(KeyboardInterrupt()))
    except AgentError as exc:
        # printable: a message may quote outside text (an API body, a path); one line
        # each, the problems it sums up first.
        for detail in exc.details:
            click.echo(f"trackssl-agent: {_one_line(detail)}", err=True)
        click.echo(f"trackssl-agent: {_one_line(str(exc))}", err=True)
        sys.exit(_exit_code(exc))
    except BrokenPipeError as exc:
        # The reader of stdout went away (``| head``): nothing left to say to anyone.
        sys.stderr.close()
        sys.exit(_exit_code(exc))
    except Exception as exc:
        # A bug, not a condition the agent knows: one line here, the traceback at debug level.
        from trackssl_agent.log import get_logger  # noqa: PLC0415 - only on this path

        get_logger(__name__).debug("unexpected error", exc_info=True)
        click.echo(
            f"trackssl-agent: internal error: {type(exc).__name__}: {_one_line(str(exc))}; "
            "rerun with --log-level debug for the traceback and report it",
            err=True,
        )
        sys.exit(_exit_code(exc))
    sys.exit(code if isinstance(code, int) else ExitCode.OK)


def _one_line(text: str) -> str:
    """``text`` redacted and made printable on one line."""
    from trackssl_agent.log import printable, redact  # noqa: PLC0415 - error paths only

    return printable(redact(text))


def _exit_code(exc: BaseException, *, usage: str | None = None) -> int:
    """The exit code ``report`` decides for ``exc`` (a usage error when ``usage`` is given)."""
    from trackssl_agent.errors import UsageError  # noqa: PLC0415
    from trackssl_agent.render import report  # noqa: PLC0415 - error paths only

    if usage is not None:
        return int(report.error_exit_code(UsageError(usage)))
    if isinstance(exc, KeyboardInterrupt):
        import signal  # noqa: PLC0415

        return int(report.signal_exit_code(signal.SIGINT))
    return int(report.error_exit_code(exc))
