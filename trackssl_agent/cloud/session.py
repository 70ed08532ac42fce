"""How requests reach the API through a proxy (HTTPS_PROXY, and the system's settings
on Windows and macOS): a ``requests`` session, imported only then. It verifies through the
tunnel with the same trust store, and cuts each attempt at its deadline like
``cloud.transport``.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from trackssl_agent import log
from trackssl_agent.cloud import failures
from trackssl_agent.cloud.transport import (
    Answer,
    AttemptFailed,
    ResponseError,
    declared_too_large,
    tls_context,
    tls_failure,
    too_large,
)
from trackssl_agent.errors import ApiError


def environ_proxies(url: str) -> dict[str, str]:
    """The proxies the environment (and the system, on Windows and macOS) sets for ``url``,
    NO_PROXY decided."""
    return dict(requests.utils.get_environ_proxies(url))


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


def make_session(
    *, headers: dict[str, str], ca_bundle: Path | None, pool_size: int
) -> requests.Session:
    """One keep-alive session carrying SPEC section 5's headers."""
    session = requests.Session()
    # Proxies come from the environment explicitly below; trust_env would also let
    # ~/.netrc replace the Authorization header and REQUESTS_CA_BUNDLE replace the store.
    session.trust_env = False
    session.mount("https://", _TrustStoreAdapter(tls_context(ca_bundle), pool_size))
    session.mount("http://", _WatchedAdapter(pool_connections=2, pool_maxsize=pool_size))
    session.headers.update(headers)
    return session


class SessionTransport:
    """Requests through one ``requests`` session and the given proxies."""

    def __init__(
        self, url: str, *, headers: dict[str, str], ca_bundle: Path | None,
        connect_timeout: float, read_timeout: float, max_body: int, pool_size: int,
        proxies: Mapping[str, str],
    ) -> None:  # fmt: skip
        self._url = url
        self._timeouts = (connect_timeout, read_timeout)
        self._max_body = max_body
        self._proxies = dict(proxies)
        self.session = make_session(headers=headers, ca_bundle=ca_bundle, pool_size=pool_size)

    def close(self) -> None:
        """Close the pooled connections."""
        self.session.close()

    def request(
        self, method: str, url: str, *, body: bytes | None, limit: float, what: str
    ) -> Answer:
        """One attempt within ``limit`` seconds (as ``cloud.transport.Transport.request``)."""
        headers = {"Content-Type": "application/json"} if body is not None else {}
        deadline = _Deadline(limit)
        try:
            with deadline:
                response = self.session.request(
                    method, url, data=body, headers=headers, stream=True,
                    allow_redirects=False, proxies=self._proxies, verify=True,
                    timeout=(
                        min(self._timeouts[0], limit),
                        min(self._timeouts[1], limit),
                    ),
                )  # fmt: skip
                with response:
                    answer = self._read(response, what=what, deadline=deadline)
        except requests.exceptions.SSLError as exc:
            if deadline.fired:
                raise AttemptFailed(f"no complete answer within {limit:g} s") from None
            if failures.not_tls(_inner(exc)):
                raise ApiError(failures.not_tls_words(self._url)) from None
            raise ApiError(tls_failure(self._url, _reason(exc))) from None
        except (
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
            requests.exceptions.ChunkedEncodingError,
        ) as exc:
            if deadline.fired:
                raise AttemptFailed(f"no complete answer within {limit:g} s") from None
            inner = _inner(exc)
            if isinstance(inner, OSError) and not isinstance(exc, requests.exceptions.Timeout):
                # Through a proxy, what refused or reset is the proxy.
                proxy = isinstance(exc, requests.exceptions.ProxyError)
                where = "the proxy" if proxy else None
                raise AttemptFailed(
                    failures.words(inner, self._url, where=where),
                    "check HTTPS_PROXY" if proxy else failures.advice(inner),
                ) from None
            raise AttemptFailed(_reason(exc)) from None
        except requests.exceptions.ContentDecodingError as exc:
            raise ResponseError(
                f"the API's answer to the {what} could not be decompressed: {_reason(exc)}"
            ) from None
        except requests.exceptions.RequestException as exc:
            # An unusable URL or header: retrying cannot help.
            raise ApiError(f"the {what} to {self._url} failed: {_reason(exc)}") from None
        return Answer(response.status_code, answer, response.headers.get)

    def _read(self, response: requests.Response, *, what: str, deadline: _Deadline) -> bytes:
        """The whole body, at most ``max_body`` bytes; a timeout once the deadline passed."""
        limit = self._max_body
        if declared_too_large(response.headers.get("Content-Length"), limit):
            raise too_large(what, limit)
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_content(65536):
            if deadline.fired:
                raise requests.exceptions.ReadTimeout("the request deadline passed")
            size += len(chunk)
            if size > limit:
                raise too_large(what, limit)
            chunks.append(chunk)
        if deadline.fired:
            raise requests.exceptions.ReadTimeout("the request deadline passed")
        return b"".join(chunks)


def _inner(exc: BaseException) -> BaseException:
    """The innermost useful exception behind a requests exception."""
    inner: BaseException = exc
    while True:
        nxt = inner.__context__ or inner.__cause__
        if nxt is None or nxt is inner:
            break
        inner = nxt
        if isinstance(inner, ssl.SSLError | TimeoutError | ConnectionError):
            break
    return inner


def _reason(exc: BaseException) -> str:
    """The innermost useful text of a requests exception, without its URL noise."""
    inner = _inner(exc)
    if isinstance(exc, requests.exceptions.Timeout) and not isinstance(inner, ssl.SSLError):
        return "timed out"
    # A proxy's CONNECT reason phrase ends up here, and may echo Proxy-Authorization.
    return log.excerpt(str(inner) or type(inner).__name__, 200)
