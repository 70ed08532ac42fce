"""The TrackSSL API client (SPEC section 5): retries, the domain list and the payloads.

The auth token lives only in the ``Authorization`` header of the transport: it is never
part of a URL, a message or an exception, and ``log.register_secret`` guards the logs
besides. Requests go over ``api_transport``'s kept-alive connections, or through a
``requests`` session (``api_session``, imported only then) when a proxy applies.
"""

from __future__ import annotations

import email.utils
import json
import os
import platform
import random
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as _quote
from pathlib import Path
from typing import Any, Protocol

from trackssl_agent import __version__, certificates, log, protocols
from trackssl_agent.api_transport import Answer, AttemptFailed, Transport
from trackssl_agent.api_transport import ResponseError as ResponseError  # noqa: PLC0414 - re-exported
from trackssl_agent.errors import ApiError, UsageError
from trackssl_agent.results import ProbeResult, utc_iso
from trackssl_agent.targets import Target, parse_target

logger = log.get_logger(__name__)

RETRY_STATUSES = frozenset({408, 429, *range(500, 600)})
ACCEPTED = frozenset({200, 201, 202, 204})
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


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
    the environment, so without a proxy variable ``requests`` is not even imported."""
    if sys.platform.startswith("linux") and not any(
        value and key.lower() in _PROXY_VARIABLES for key, value in os.environ.items()
    ):
        return {}
    from trackssl_agent import api_session  # noqa: PLC0415 - see above

    return api_session.environ_proxies(url)


def user_agent() -> str:
    """``trackssl-agent/<version> (<os>; python <x.y>)``."""
    system = platform.system() or sys.platform
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    return f"trackssl-agent/{__version__} ({system}; python {python})"


@dataclass(frozen=True)
class ApiSettings:
    """Where and how to talk to the API."""

    url: str
    auth_token: str
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

    def __repr__(self) -> str:
        return f"ApiSettings(url={self.url!r}, auth_token=[REDACTED])"


@dataclass(frozen=True)
class Domain:
    """One entry of ``domains.json``, decided into a Target."""

    domain_id: int
    hostname: str
    port: str
    """The port as text, as the payload echoes it."""
    target: Target


def headers(settings: ApiSettings) -> dict[str, str]:
    """SPEC section 5's headers of every request."""
    return {
        "Authorization": f"Bearer {settings.auth_token}",
        "Accept": "application/json",
        "User-Agent": user_agent(),
    }


def retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
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
        log.register_secret(settings.auth_token)
        self.settings = settings
        self._sleep = sleep
        self._clock = clock
        self._jitter = jitter
        self._stop = stop
        base = f"{settings.url}/api/v1/agents/{settings.agent_token}"
        self.domains_url = f"{base}/domains.json"
        self.certificate_url = f"{base}/certificate.json"
        self._proxies = dict(proxies if proxies is not None else environ_proxies(settings.url))
        self._transport = self._make_transport()

    def _make_transport(self) -> _Transport:
        settings = self.settings
        scheme = settings.url.partition(":")[0].lower()
        if self._proxies.get(scheme) or self._proxies.get("all"):
            from trackssl_agent import api_session  # noqa: PLC0415 - see environ_proxies

            return api_session.SessionTransport(
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
        return decode_domains(body, content_type)

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
            data = json.dumps(payload, separators=(",", ":")).encode()
            if domain_id is None:
                domain_id = payload.get("domain", {}).get("domain_id")
        status, body, content_type = self._request(
            "POST", self.certificate_url, data=data, what="result post", overloaded=overloaded
        )
        if status in ACCEPTED:
            if _looks_html(body, content_type):
                # A captive portal or proxy page answering 200 did not store anything.
                raise TransientError(
                    "the API answered the post with an HTML page "
                    f"({_title(body)}); is a proxy or captive portal in between?"
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
        for number in range(attempts):
            wait: float | None = None
            limit = max(0.1, min(settings.request_deadline, end - self._clock()))
            try:
                answer = self._transport.request(method, url, body=data, limit=limit, what=what)
            except AttemptFailed as exc:
                problem = str(exc)
            else:
                status = answer.status
                logger.debug("%s %s -> HTTP %d (%d bytes)", method, url, status, len(answer.body))
                self._check_auth(status, what=what)
                if status not in RETRY_STATUSES:
                    if 300 <= status < 400:
                        location = _shown(answer.header("Location") or "(none)")
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
                    f"{limit_note}: {problem} ({settings.url})"
                )
            logger.warning(
                "%s failed (%s); retry %d of %d in %.1f s",
                what, problem, number + 1, settings.retries, delay,
            )  # fmt: skip
            self._sleep(delay)
        raise AssertionError("unreachable")

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


def _looks_html(body: bytes, content_type: str) -> bool:
    return "html" in content_type.lower() or body.lstrip()[:1] == b"<"


def _title(body: bytes) -> str:
    match = _TITLE.search(body[:65536])
    if match:
        return "title " + repr(match.group(1).decode("utf-8", "replace").strip()[:80])
    return "no title"


def _snippet(body: bytes) -> str:
    """The start of an error body, made printable: it must not forge a log line."""
    text = log.printable(body[:200].decode("utf-8", "replace").strip())
    return text or "(empty body)"


def _shown(value: object) -> str:
    """A value from outside for a message: short, escaped, never a deep structure."""
    if isinstance(value, str):
        return repr(value[:60]) + ("..." if len(value) > 60 else "")
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if -(10**20) < value < 10**20 else "a huge number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _json_body(body: bytes, content_type: str, *, what: str) -> Any:
    if _looks_html(body, content_type):
        raise ResponseError(
            f"the API answered {what} with an HTML page ({_title(body)}), not JSON; check "
            "TRACKSSL_URL and whether a proxy or captive portal is in between"
        )
    try:
        return json.loads(body)
    except RecursionError:
        raise ResponseError(f"the API answered {what} with JSON nested too deeply") from None
    except ValueError as exc:  # UnicodeDecodeError included
        reason = log.printable(str(exc))[:200]
        raise ResponseError(f"the API answered {what} with invalid JSON: {reason}") from None


def _protocol_option(value: object) -> str | None:
    """The ``--starttls`` value a ``protocol`` field stands for, or None if unknown."""
    if value is None or value == "":
        return protocols.AUTO
    if not isinstance(value, str):
        return None
    name = value.strip().lower()
    if name in protocols.STARTTLS_CHOICES:
        return name
    if name in protocols.SCHEMES:
        chosen, _port = protocols.SCHEMES[name]
        return chosen.value if chosen else protocols.NONE
    return None


_MAX_ID = 2**63
_MAX_HOSTNAME = 255
"""Longer than any DNS name (253) or IPv6 literal with brackets."""


def _domain(entry: object) -> Domain:
    """One ``data`` entry; ValueError says what is wrong with it (values shown short)."""
    if not isinstance(entry, dict):
        raise ValueError(f"it is {_shown(entry) if entry is None else 'not an object'}")
    raw_id = entry.get("domain_id")
    if isinstance(raw_id, str) and raw_id.isascii() and raw_id.isdigit() and len(raw_id) < 20:
        domain_id = int(raw_id)
    elif isinstance(raw_id, int) and not isinstance(raw_id, bool):
        domain_id = raw_id
    else:
        domain_id = -1
    if not 0 <= domain_id < _MAX_ID:
        raise ValueError(f"bad domain_id {_shown(raw_id)}")
    hostname = entry.get("hostname")
    if not isinstance(hostname, str) or not hostname.strip() or len(hostname) > _MAX_HOSTNAME:
        raise ValueError(f"bad hostname {_shown(hostname)}")
    hostname = hostname.strip()
    raw_port = entry.get("port")
    if isinstance(raw_port, str) and len(raw_port) <= 16:
        port_text = raw_port.strip()
        port = int(port_text) if port_text.isascii() and port_text.isdigit() else 0
    elif isinstance(raw_port, int) and not isinstance(raw_port, bool):
        port = raw_port
    else:
        port = 0
    if not 1 <= port <= 65535:
        raise ValueError(f"bad port {_shown(raw_port)}")
    option = _protocol_option(entry.get("protocol"))
    if option is None:
        raise ValueError(f"unknown protocol {_shown(entry.get('protocol'))}")
    host = f"[{hostname}]" if ":" in hostname and not hostname.startswith("[") else hostname
    try:
        target = parse_target(f"{host}:{port}", starttls=option)
    except UsageError as exc:
        raise ValueError(log.printable(str(exc))[:300]) from None
    return Domain(domain_id, hostname, str(port), target)


SHOWN_SKIPPED = 5
"""Skipped domain-list entries described in full; the rest are counted."""


@dataclass(frozen=True)
class Skipped:
    """The domain-list entries left out: how many, and why for the first few."""

    count: int = 0
    first: tuple[str, ...] = ()
    """One warning each for the first ``SHOWN_SKIPPED`` entries skipped."""

    def lines(self) -> list[str]:
        """The warnings to log: the first few in full, then one line counting the rest."""
        more = self.count - len(self.first)
        if more <= 0:
            return list(self.first)
        return [*self.first, f"{more} more domain list entries skipped ({self.count} in all)"]


def parse_domains(document: Any) -> tuple[list[Domain], Skipped]:
    """``{"data": [...]}`` -> domains; a bad entry is skipped and summarised.

    Memory stays proportional to the good entries: a list of millions of bad ones builds
    no more than ``SHOWN_SKIPPED`` messages.
    """
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise ResponseError('the domain list is not of the form {"data": [...]}')
    domains: list[Domain] = []
    first: list[str] = []
    skipped = 0
    seen: set[int] = set()
    for index, entry in enumerate(document["data"]):
        if entry is None and len(first) >= SHOWN_SKIPPED:
            skipped += 1  # the common junk, counted without raising
            continue
        try:
            domain = _domain(entry)
            if domain.domain_id in seen:
                raise ValueError(f"domain_id {domain.domain_id} repeats")
        except ValueError as exc:
            skipped += 1
            if len(first) < SHOWN_SKIPPED:
                first.append(f"domain list entry {index} skipped: {exc}")
            continue
        seen.add(domain.domain_id)
        domains.append(domain)
    return domains, Skipped(skipped, tuple(first))


def decode_domains(
    body: bytes, content_type: str = "application/json"
) -> tuple[list[Domain], Skipped]:
    """The body of a ``domains.json`` answer -> domains; ResponseError for anything that is
    not the domain list (HTML, broken or too deeply nested JSON, another shape)."""
    return parse_domains(_json_body(body, content_type, what="the domain list"))


def payload_body(domain: Domain, result: ProbeResult) -> bytes:
    """``payload`` as JSON bytes, built once per result and then posted and stored as they
    are: ASCII and without a newline, so one line of an outbox segment. Written out here
    rather than dumped from the dict: each PEM is encoded once, with no encoder machinery
    per key (this runs for every target of every cycle)."""
    pems = [_quote(certificates.to_pem(der)) for der in result.chain] if result.ok else []
    error = _quote(str(result.error) if result.error else "")
    probed_at = _quote(utc_iso(result.probed_at))
    leaf = pems[0] if pems else '""'
    text = (
        f'{{"domain":{{"domain_id":{domain.domain_id:d},"hostname":{_quote(domain.hostname)},'
        f'"port":{_quote(domain.port)},"certificate":{leaf},'
        f'"error":{error},"chain":[{",".join(pems)}],"probed_at":{probed_at},'
        f'"tls_version":{_optional(result.tls_version)},"address":{_optional(result.address)},'
        f'"agent_version":{_quote(__version__)}}}}}'
    )
    return text.encode("ascii")


def _optional(value: str | None) -> str:
    return "null" if value is None else _quote(value)


def payload(domain: Domain, result: ProbeResult) -> dict[str, Any]:
    """The body of SPEC section 5's certificate.json post for one probe result."""
    chain = [certificates.to_pem(der) for der in result.chain] if result.ok else []
    return {
        "domain": {
            "domain_id": domain.domain_id,
            "hostname": domain.hostname,
            "port": domain.port,
            "certificate": chain[0] if chain else "",
            "error": str(result.error) if result.error else "",
            "chain": chain,
            "probed_at": utc_iso(result.probed_at),
            "tls_version": result.tls_version,
            "address": result.address,
            "agent_version": __version__,
        }
    }
