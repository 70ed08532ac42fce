"""The composition root: the one place that wires an API cycle (session, probe settings,
state dir, outbox) from a Config, for ``check-once`` and for each cycle of ``run``."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

from trackssl_agent import log
from trackssl_agent.agent.cycle import Progress, run_cycle
from trackssl_agent.agent.cycle_report import CycleReport
from trackssl_agent.agent.memory import limit_malloc_arenas
from trackssl_agent.cloud.api import ApiClient, ApiSettings
from trackssl_agent.config.config import Config
from trackssl_agent.engine.probe import ProbeSettings
from trackssl_agent.state.cycle_state import StateDir

logger = log.get_logger(__name__)


def api_settings(config: Config) -> ApiSettings:
    """The API connection a Config describes; ConfigError when a token is missing."""
    auth, agent = config.require_api()
    return ApiSettings(
        url=config.url, auth_token=auth, agent_token=agent, ca_bundle=config.ca_bundle
    )


def probe_settings(config: Config, *, family: socket.AddressFamily) -> ProbeSettings:
    """Per-target probe settings from a Config (``family`` is the ``-4``/``-6`` choice)."""
    return ProbeSettings(timeout=config.timeout, family=family, allow=config.allow)


def api_cycle(
    config: Config,
    *,
    state: StateDir | None,
    stop: threading.Event,
    family: socket.AddressFamily = socket.AF_UNSPEC,
    progress: Progress | None = None,
    keep_results: bool = False,
    sleep: Callable[[float], object] | None = None,
) -> CycleReport:
    """One API cycle with a fresh session; through ``state``'s outbox, or a dry run that
    posts nothing when ``state`` is None. The default retry sleep waits on ``stop``, so a
    daemon asked to stop does not sit out a backoff."""
    with ApiClient(api_settings(config), sleep=sleep or stop.wait, stop=stop) as client:
        return run_cycle(
            client=client, outbox=state.outbox() if state is not None else None,
            settings=probe_settings(config, family=family), concurrency=config.concurrency,
            stop=stop, progress=progress, keep_results=keep_results,
        )  # fmt: skip


def run_once(
    config: Config,
    *,
    stop: threading.Event,
    family: socket.AddressFamily = socket.AF_UNSPEC,
    dry_run: bool = False,
    progress: Progress | None = None,
    keep_results: bool = False,
    sleep: Callable[[float], object] | None = None,
) -> CycleReport:
    """``check-once`` with the API: one cycle under the state-dir lock, through the outbox.
    A dry run takes no lock and touches no outbox."""
    limit_malloc_arenas()
    api_settings(config)  # a missing token is a ConfigError before the state dir is touched
    with StateDir(config.state_dir) if not dry_run else _no_state() as state:
        report = api_cycle(
            config, state=state, stop=stop, family=family, progress=progress,
            keep_results=keep_results, sleep=sleep,
        )  # fmt: skip
    # The daemon logs its own line (with the next run time); this one is check-once's.
    logger.info("cycle done: %s", report.figures())
    return report


@contextlib.contextmanager
def _no_state() -> Iterator[None]:
    yield None
