"""The TrackSSL API client (SPEC section 5): one session, retries, and the payloads.

The auth token lives only in the session's ``Authorization`` header: it is never part of
a URL, a message or an exception, and ``log.register_secret`` guards the logs besides.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import platform
import random
import re
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
import truststore
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from trackssl_agent import __version__, certificates, log, protocols
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


class ResponseError(ApiError):
    """The API answered something that is not its JSON: an HTML page, broken or huge JSON."""


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


_active = threading.local()


class _Deadline:
    """The deadline of one request. At it, the sockets the request uses are shut down, so
    a read blocked on a server that trickles (each byte inside the read timeout) returns
    at once, whether it waits for the TLS handshake, the headers or the body."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.fired = False
        self._lock = threading.Lock()
        self._done = False
        self._sockets: list[socket.socket] = []
        self._owned: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        _active.deadline = self
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        _active.deadline = None
        self._timer.cancel()
        with self._lock:
            self._done = True
            owned, self._owned, self._sockets = self._owned, [], []
        for sock in owned:
            sock.close()

    def watch(self, sock: socket.socket, *, duplicate: bool) -> None:
        """Cut ``sock`` at the deadline. ``duplicate`` for a fresh TCP socket: the TLS layer
        detaches that object when it wraps it, while a duplicate of its descriptor still
        reaches the same connection (and is closed here, never the connection itself)."""
        try:
            watched = sock.dup() if duplicate else sock
        except OSError:
            return
        with self._lock:
            if self._done:
                if duplicate:
                    watched.close()
                return
            self._sockets.append(watched)
            if duplicate:
                self._owned.append(watched)
        if self.fired:
            self._fire()

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.fired = True
            sockets = list(self._sockets)
        for sock in sockets:
            # The plain socket's shutdown even for an SSLSocket: it must not touch the TLS
            # state another thread is reading with.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _watch(sock: socket.socket | None, *, duplicate: bool) -> None:
    deadline: _Deadline | None = getattr(_active, "deadline", None)
    if deadline is not None and sock is not None:
        deadline.watch(sock, duplicate=duplicate)


class _WatchedConnection(HTTPConnection):
    """A connection whose sockets the current request's deadline can cut."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _watch(sock, duplicate=True)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watch(self.sock, duplicate=False)  # a kept-alive connection reused
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(HTTPSConnection):
    """``_WatchedConnection`` for https (and https through a proxy tunnel)."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _watch(sock, duplicate=True)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watch(self.sock, duplicate=False)
        super().request(*args, **kwargs)


class _WatchedPool(HTTPConnectionPool):
    ConnectionCls = _WatchedConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_POOLS = {"http": _WatchedPool, "https": _WatchedHTTPSPool}


class _WatchedAdapter(HTTPAdapter):
    """Connections from pools whose sockets a request's deadline can cut."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **kwargs)
        if type(manager) is urllib3.ProxyManager:  # a SOCKS manager has its own classes
            manager.pool_classes_by_scheme = _POOLS
        return manager


class _TrustStoreAdapter(_WatchedAdapter):
    """Verifies the API against the OS trust store (plus TRACKSSL_CA_BUNDLE), also through
    a proxy tunnel, so a TLS-inspecting proxy whose CA is installed just works."""

    def __init__(self, context: ssl.SSLContext, pool_size: int) -> None:
        self._context = context
        super().__init__(pool_connections=2, pool_maxsize=pool_size)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        kwargs["ssl_context"] = self._context
        return super().proxy_manager_for(proxy, **kwargs)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        # requests would load certifi into the context on every connection: the OS store
        # (and the configured bundle) already decide, so only demand verification.
        conn.cert_reqs = "CERT_REQUIRED"
        conn.ca_certs = None
        conn.ca_cert_dir = None


def tls_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """The OS trust store, plus the extra CAs of ``ca_bundle``; hostname checked."""
    context = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_bundle is not None:
        try:
            context.load_verify_locations(cafile=str(ca_bundle))
        except (OSError, ssl.SSLError) as exc:
            raise ApiError(f"TRACKSSL_CA_BUNDLE {ca_bundle}: cannot load it: {exc}") from None
    return context


def make_session(settings: ApiSettings) -> requests.Session:
    """One keep-alive session carrying SPEC section 5's headers."""
    session = requests.Session()
    # Proxies come from the environment explicitly below; trust_env would also let
    # ~/.netrc replace the Authorization header and REQUESTS_CA_BUNDLE replace the store.
    session.trust_env = False
    session.mount(
        "https://", _TrustStoreAdapter(tls_context(settings.ca_bundle), settings.pool_size)
    )
    session.mount("http://", _WatchedAdapter(pool_connections=2, pool_maxsize=settings.pool_size))
    session.headers.update(
        {
            "Authorization": f"Bearer {settings.auth_token}",
            "Accept": "application/json",
            "User-Agent": user_agent(),
        }
    )
    return session


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
        session: requests.Session | None = None,
        sleep: Callable[[float], object] = time.sleep,
        jitter: Callable[[], float] = random.random,
        stop: threading.Event | None = None,
        proxies: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        log.register_secret(settings.auth_token)
        self.settings = settings
        self.session = session or make_session(settings)
        self._sleep = sleep
        self._clock = clock
        self._jitter = jitter
        self._stop = stop
        base = f"{settings.url}/api/v1/agents/{settings.agent_token}"
        self.domains_url = f"{base}/domains.json"
        self.certificate_url = f"{base}/certificate.json"
        self._proxies = dict(
            proxies if proxies is not None else requests.utils.get_environ_proxies(settings.url)
        )

    def close(self) -> None:
        """Close the pooled connections."""
        self.session.close()

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

    def post(self, payload: Mapping[str, Any]) -> None:
        """Post one result; returns once the API accepted it."""
        data = json.dumps(payload, separators=(",", ":")).encode()
        status, body, content_type = self._request(
            "POST", self.certificate_url, data=data, what="result post"
        )
        if status in ACCEPTED:
            if _looks_html(body, content_type):
                # A captive portal or proxy page answering 200 did not store anything.
                raise TransientError(
                    "the API answered the post with an HTML page "
                    f"({_title(body)}); is a proxy or captive portal in between?"
                )
            return
        domain = payload.get("domain", {})
        raise RejectedError(
            f"the API refused the result for domain_id {domain.get('domain_id')} "
            f"with HTTP {status}: {_snippet(body)}"
        )

    def _request(
        self, method: str, url: str, *, what: str, data: bytes | None = None
    ) -> tuple[int, bytes, str]:
        settings = self.settings
        headers = {"Content-Type": "application/json"} if data is not None else {}
        attempts = settings.retries + 1
        started = self._clock()
        end = started + settings.budget
        for attempt in range(attempts):
            wait: float | None = None
            limit = max(0.1, min(settings.request_deadline, end - self._clock()))
            deadline = _Deadline(limit)
            try:
                with deadline:
                    response = self.session.request(
                        method, url, data=data, headers=headers, stream=True,
                        allow_redirects=False, proxies=self._proxies, verify=True,
                        timeout=(
                            min(settings.connect_timeout, limit),
                            min(settings.read_timeout, limit),
                        ),
                    )  # fmt: skip
                    with response:
                        body = self._read(response, what=what, deadline=deadline)
            except requests.exceptions.SSLError as exc:
                if not deadline.fired:
                    raise ApiError(
                        f"TLS verification of {settings.url} failed ({_reason(exc)}); if a "
                        "TLS-inspecting proxy sits in between, install its CA in the system "
                        "store or set TRACKSSL_CA_BUNDLE"
                    ) from None
                problem = f"no complete answer within {limit:g} s"
            except (
                requests.exceptions.ConnectionError,
                requests.exceptions.Timeout,
                requests.exceptions.ChunkedEncodingError,
            ) as exc:
                problem = (
                    f"no complete answer within {limit:g} s" if deadline.fired else _reason(exc)
                )
            except requests.exceptions.ContentDecodingError as exc:
                raise ResponseError(
                    f"the API's answer to the {what} could not be decompressed: {_reason(exc)}"
                ) from None
            except requests.exceptions.RequestException as exc:
                # An unusable URL or header: retrying cannot help.
                raise ApiError(f"the {what} to {settings.url} failed: {_reason(exc)}") from None
            else:
                status = response.status_code
                logger.debug("%s %s -> HTTP %d (%d bytes)", method, url, status, len(body))
                self._check_auth(status, what=what)
                if status not in RETRY_STATUSES:
                    if 300 <= status < 400:
                        location = _shown(response.headers.get("Location") or "(none)")
                        raise ApiError(
                            f"the API redirected the {what} to {location}"
                            "; set TRACKSSL_URL to the final address"
                        )
                    return status, body, response.headers.get("Content-Type", "")
                problem = f"HTTP {status}"
                wait = retry_after(response.headers.get("Retry-After"))
            delay = min(self._delay(attempt) if wait is None else wait, settings.max_delay)
            over = self._clock() + delay >= end
            if attempt + 1 >= attempts or over or (self._stop is not None and self._stop.is_set()):
                spent = self._clock() - started
                limit_note = f" (its time limit is {settings.budget:g} s)" if over else ""
                raise TransientError(
                    f"the {what} failed after {attempt + 1} attempts in {spent:.0f} s"
                    f"{limit_note}: {problem} ({settings.url})"
                )
            logger.warning(
                "%s failed (%s); retry %d of %d in %.1f s",
                what, problem, attempt + 1, settings.retries, delay,
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

    def _read(self, response: requests.Response, *, what: str, deadline: _Deadline) -> bytes:
        """The whole body, at most ``max_body`` bytes; a timeout once the deadline passed."""
        limit = self.settings.max_body
        too_large = ResponseError(
            f"the API's answer to the {what} is larger than {limit // 1024 // 1024} MiB; "
            "is TRACKSSL_URL right?"
        )
        declared = response.headers.get("Content-Length", "")
        if (
            declared.isascii()
            and declared.isdigit()
            and (len(declared) > 15 or int(declared) > limit)
        ):
            raise too_large
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_content(65536):
            if deadline.fired:
                raise requests.exceptions.ReadTimeout("the request deadline passed")
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        if deadline.fired:
            raise requests.exceptions.ReadTimeout("the request deadline passed")
        return b"".join(chunks)


def _reason(exc: BaseException) -> str:
    """The innermost useful text of a requests exception, without its URL noise."""
    inner: BaseException = exc
    while True:
        nxt = inner.__context__ or inner.__cause__
        if nxt is None or nxt is inner:
            break
        inner = nxt
        if isinstance(inner, ssl.SSLError | TimeoutError | ConnectionError):
            break
    if isinstance(exc, requests.exceptions.Timeout) and not isinstance(inner, ssl.SSLError):
        return "timed out"
    text = log.printable(str(inner) or type(inner).__name__)
    return text if len(text) <= 200 else text[:200] + "..."


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
