"""The TrackSSL API client (SPEC section 5): headers, retries and the errors they end in.

What the bytes mean (the domain list, the payloads) is ``cloud.schema``'s. The auth token is
a ``Secret`` revealed only into the ``Authorization`` header: it is never part of a URL, a
message or an exception. Requests go over ``cloud.transport``'s kept-alive connections, or
through a ``requests`` session (``cloud.session``, imported only then) when a proxy applies.
"""

from __future__ import annotations

import base64
import os
import platform
import random
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from trackssl_agent import __version__, log
from trackssl_agent.base import ascii_values
from trackssl_agent.cloud import schema
from trackssl_agent.cloud.schema import Domain, Skipped
from trackssl_agent.cloud.transport import Answer, AttemptFailed, Transport
from trackssl_agent.config.secret import Secret
from trackssl_agent.config.settings import is_loopback_host
from trackssl_agent.errors import ApiError
from trackssl_agent.errors import ResponseError as ResponseError  # noqa: PLC0414 - raised here

logger = log.get_logger(__name__)

RETRY_STATUSES = frozenset({408, 429, *range(500, 600)})
ACCEPTED = frozenset({200, 201, 202, 204})
_RETRY_AFTER_CAP = 10**9
"""Longer than any delay: ``ApiSettings.max_delay`` caps what is waited."""


class AuthError(ApiError):
    """401/403/404: a token is wrong; retrying in this cycle cannot help."""


class TransientError(ApiError):
    """The API stayed unreachable or busy through every retry."""


class RejectedError(ApiError):
    """The API refused one result for good (400, 409, 410, 413, 422...)."""


class _Transport(Protocol):
    def request(
        self, method: str, url: str, *, body: bytes | None, limit: float, what: str
    ) -> Answer: ...

    def close(self) -> None: ...


_PROXY_VARIABLES = frozenset({"http_proxy", "https_proxy", "all_proxy"})


def environ_proxies(url: str) -> dict[str, str]:
    """The proxies that apply to ``url`` (NO_PROXY decided). On Linux they come only from
    the environment, so without a proxy variable ``requests`` is not even imported.

    None for a plain-http URL (which config allows only to a loopback host), whatever
    HTTP_PROXY, ALL_PROXY or NO_PROXY say: a proxy would receive the token in clear, and
    fetch "localhost" on its own host. An https URL goes through a proxy's CONNECT tunnel.
    """
    if not proxiable(url):
        return {}
    if sys.platform.startswith("linux") and not any(
        value and key.lower() in _PROXY_VARIABLES for key, value in os.environ.items()
    ):
        return {}
    from trackssl_agent.cloud import session  # noqa: PLC0415 - see above

    proxies = session.environ_proxies(url)
    register_proxy_credentials(proxies.values())
    return proxies


def proxiable(url: str) -> bool:
    """True for the only API URLs ever reached through a proxy: https ones."""
    return urlsplit(url).scheme.lower() == "https"


def register_proxy_credentials(proxies: Iterable[str]) -> None:
    """Register the user:password of each proxy URL as secrets: a proxy may echo its
    Proxy-Authorization header (base64 of ``user:password``) in an answer we print."""
    for proxy in proxies:
        try:
            parts = urlsplit(proxy)
            user, password = parts.username, parts.password
        except ValueError:
            continue
        if password is None:
            continue
        pair = f"{unquote(user or '')}:{unquote(password)}"
        for secret in (password, unquote(password), pair):
            log.register_secret(secret)
        log.register_secret(base64.b64encode(pair.encode("utf-8", "replace")).decode())


def user_agent() -> str:
    """``trackssl-agent/<version> (<os>; python <x.y>)``."""
    system = platform.system() or sys.platform
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    return f"trackssl-agent/{__version__} ({system}; python {python})"


@dataclass(frozen=True)
class ApiSettings:
    """Where and how to talk to the API."""

    url: str
    auth_token: Secret
    agent_token: str
    ca_bundle: Path | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    """Longest wait for any one read of the socket."""
    request_deadline: float = 30.0
    """Longest one request may take in all: connect, headers and the whole body. The
    read timeout alone would let a server trickling a byte every few seconds hold on."""
    budget: float = 110.0
    """Longest one call (the domain list, one post) may take with all its retries and
    delays: a hung or trickling API is given up on within 2 minutes."""
    retries: int = 4
    """Retries after the first attempt, for 408, 429, 5xx, connection errors and timeouts."""
    backoff: float = 1.0
    """First retry delay in seconds; doubles each retry, with jitter."""
    max_delay: float = 120.0
    """Cap for one delay, ``Retry-After`` included."""
    max_body: int = 16 * 1024 * 1024
    pool_size: int = 8


def headers(settings: ApiSettings) -> dict[str, str]:
    """SPEC section 5's headers of every request."""
    return {
        "Authorization": f"Bearer {settings.auth_token.reveal()}",
        "Accept": "application/json",
        "User-Agent": user_agent(),
    }


def retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date), or None for
    anything else (then the normal backoff applies)."""
    if not value:
        return None
    value = value.strip()
    seconds = ascii_values.whole(value, cap=_RETRY_AFTER_CAP)
    if seconds is not None:
        return float(seconds)
    when = ascii_values.http_date(value)
    if when is None:
        return None
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class ApiClient:
    """Fetches the domain list and posts results, retrying what is worth retrying."""

    def __init__(
        self,
        settings: ApiSettings,
        *,
        sleep: Callable[[float], object] = time.sleep,
        jitter: Callable[[], float] = random.random,
        stop: threading.Event | None = None,
        proxies: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._sleep = sleep
        self._clock = clock
        self._jitter = jitter
        self._stop = stop
        base = f"{settings.url}/api/v1/agents/{settings.agent_token}"
        self.domains_url = f"{base}/domains.json"
        self.certificate_url = f"{base}/certificate.json"
        parts = urlsplit(settings.url)
        if not proxiable(settings.url) and not is_loopback_host(parts.hostname or ""):
            # config refuses such a URL already; the token must never cross a network in clear
            raise ApiError(f"{parts.scheme}:// is allowed only to a loopback host; use https")
        if proxies is None:
            proxies = environ_proxies(settings.url)
        elif proxiable(settings.url):
            register_proxy_credentials(proxies.values())
        # Never a proxy for plain http, whoever passed one: see environ_proxies.
        self._proxies = dict(proxies) if proxiable(settings.url) else {}
        self._transport = self._make_transport()

    def _make_transport(self) -> _Transport:
        settings = self.settings
        if self._proxies.get("https") or self._proxies.get("all"):
            from trackssl_agent.cloud import session  # noqa: PLC0415 - see environ_proxies

            return session.SessionTransport(
                settings.url, headers=headers(settings), ca_bundle=settings.ca_bundle,
                connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout,
                max_body=settings.max_body, pool_size=settings.pool_size, proxies=self._proxies,
            )  # fmt: skip
        return Transport(
            settings.url, headers=headers(settings), ca_bundle=settings.ca_bundle,
            connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout,
            max_body=settings.max_body,
        )  # fmt: skip

    def close(self) -> None:
        """Close the kept-alive connections."""
        self._transport.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fetch_domains(self) -> tuple[list[Domain], Skipped]:
        """The domains this agent must check, and a summary of the entries skipped."""
        status, body, content_type = self._request("GET", self.domains_url, what="domain list")
        if status != 200:
            raise ApiError(f"the API answered HTTP {status} to the domain list request")
        return schema.decode_domains(body, content_type)

    def post(
        self,
        payload: Mapping[str, Any] | bytes,
        *,
        domain_id: int | None = None,
        overloaded: Callable[[float], None] | None = None,
    ) -> None:
        """Post one result (a payload, or its JSON bytes); returns once the API accepted it.

        ``overloaded(delay)`` is told of each 429 or 503 before its retry waits."""
        if isinstance(payload, bytes):
            data = payload
        else:
            data, named = schema.encode_payload(payload)
            domain_id = named if domain_id is None else domain_id
        status, body, content_type = self._request(
            "POST", self.certificate_url, data=data, what="result post", overloaded=overloaded
        )
        if status in ACCEPTED:
            if schema.looks_html(body, content_type):
                # A captive portal or proxy page answering 200 did not store anything.
                raise TransientError(
                    "the API answered the post with an HTML page "
                    f"({schema.html_title(body)}); is a proxy or captive portal in between?"
                )
            return
        raise RejectedError(
            f"the API refused the result for domain_id {domain_id} "
            f"with HTTP {status}: {_snippet(body)}"
        )

    def _request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        data: bytes | None = None,
        overloaded: Callable[[float], None] | None = None,
    ) -> tuple[int, bytes, str]:
        """Attempts within the budget, each cut at its own deadline."""
        settings = self.settings
        attempts = settings.retries + 1
        started = self._clock()
        end = started + settings.budget
        number = 0
        while True:  # each turn returns, raises, or sleeps before the next attempt
            wait: float | None = None
            advice = ""
            limit = max(0.1, min(settings.request_deadline, end - self._clock()))
            try:
                answer = self._transport.request(method, url, body=data, limit=limit, what=what)
            except AttemptFailed as exc:
                problem, advice = str(exc), exc.advice
            else:
                status = answer.status
                logger.debug("%s %s -> HTTP %d (%d bytes)", method, url, status, len(answer.body))
                self._check_auth(status, what=what)
                if status not in RETRY_STATUSES:
                    if 300 <= status < 400:
                        location = schema.shown(answer.header("Location") or "(none)")
                        raise ApiError(
                            f"the API redirected the {what} to {location}"
                            "; set TRACKSSL_URL to the final address"
                        )
                    return status, answer.body, answer.header("Content-Type") or ""
                problem = f"HTTP {status}"
                wait = retry_after(answer.header("Retry-After"))
            delay = min(self._delay(number) if wait is None else wait, settings.max_delay)
            if overloaded is not None and problem in ("HTTP 429", "HTTP 503"):
                overloaded(delay)
            over = self._clock() + delay >= end
            if number + 1 >= attempts or over or (self._stop is not None and self._stop.is_set()):
                spent = self._clock() - started
                limit_note = f" (its time limit is {settings.budget:g} s)" if over else ""
                raise TransientError(
                    f"the {what} failed after {number + 1} attempts in {spent:.0f} s"
                    f"{limit_note}: {problem} ({settings.url})" + (f"; {advice}" if advice else "")
                )
            logger.warning(
                "%s failed (%s); retry %d of %d in %.1f s",
                what, problem, number + 1, settings.retries, delay,
            )  # fmt: skip
            self._sleep(delay)
            number += 1

    def _delay(self, attempt: int) -> float:
        """Exponential backoff with equal jitter: half fixed, half random."""
        full = self.settings.backoff * (2**attempt)
        return float(full / 2 + full / 2 * self._jitter())

    def _check_auth(self, status: int, *, what: str) -> None:
        if status in (401, 403):
            raise AuthError(
                f"the API rejected TRACKSSL_AUTH_TOKEN (HTTP {status} on the {what}); "
                "check the auth token (the API key) in your configuration"
            )
        if status == 404:
            raise AuthError(
                f"the API does not know TRACKSSL_AGENT_TOKEN {self.settings.agent_token!r} "
                f"(HTTP 404 on the {what}); check the agent token, and TRACKSSL_URL "
                f"({self.settings.url})"
            )


def _snippet(body: bytes) -> str:
    """The start of an error body, made printable (it must not forge a log line), any
    echo of the token removed before it is cut."""
    text = log.excerpt(body[:4096].decode("utf-8", "replace").strip(), 200)
    return text or "(empty body)"
