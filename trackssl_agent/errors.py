"""The agent's error hierarchy: each error carries the exit code it ends the process with."""

from __future__ import annotations


class AgentError(Exception):
    """An error that ends a command with a one-line message and an exit code."""

    exit_code = 2


class UsageError(AgentError):
    """Bad command-line input (a target, an option value); nothing was probed."""

    exit_code = 3


class ConfigError(AgentError):
    """Bad configuration (file, environment or option); nothing was probed."""

    exit_code = 3


class LockError(AgentError):
    """Another agent holds the state-dir lock."""

    exit_code = 3


class ApiError(AgentError):
    """The cycle failed: the TrackSSL API could not be reached or rejected the tokens."""

    exit_code = 2


class StateDirError(ConfigError):
    """The state dir is not safe: another user could plant files there for the agent."""

    exit_code = 3
