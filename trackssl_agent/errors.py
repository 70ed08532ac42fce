"""The agent's error hierarchy and the process exit codes: each error kind declares the code
it ends the process with; ``report`` decides every other code and is the one place that
turns any outcome (an error included) into the process's exit status."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """The process exit codes, the same for every command (SPEC section 2, Nagios style)."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    USAGE = 3
    """Nothing was probed or posted: the input must change."""


class AgentError(Exception):
    """An error that ends a command with a one-line message and an exit code."""

    exit_code = ExitCode.CRITICAL

    def __init__(self, message: str = "", *, details: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.details = details
        """One line per problem found, said before the message that sums them up (each
        bad line of a targets file); empty for a single problem."""


class UsageError(AgentError):
    """Bad command-line input (a target, an option value); nothing was probed."""

    exit_code = ExitCode.USAGE


class ConfigError(AgentError):
    """Bad configuration (file, environment or option); nothing was probed."""

    exit_code = ExitCode.USAGE


class LockError(AgentError):
    """Another agent holds the state-dir lock."""

    exit_code = ExitCode.USAGE


class ApiError(AgentError):
    """The cycle failed: the TrackSSL API could not be reached or rejected the tokens."""

    exit_code = ExitCode.CRITICAL


class ResponseError(ApiError):
    """The API answered something that is not its JSON: an HTML page, broken or huge JSON."""


class StateDirError(ConfigError):
    """The state dir is not safe: another user could plant files there for the agent."""


class LogFileError(ConfigError):
    """The log file is something another user could have planted: a link, their file."""
