"""What a connection to the API met, in the agent's words: ``connection refused``, ``the
server at URL does not speak TLS``, never the library's ``[Errno 111] Connection refused`` or
``[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)``. Shared by the
transports and the doctor, so that each says a failure the same way."""

from __future__ import annotations

import socket
import ssl
from urllib.parse import urlsplit

from trackssl_agent import log
from trackssl_agent.config.settings import is_loopback_host

_NOT_TLS = frozenset({"WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "UNKNOWN_PROTOCOL"})
"""OpenSSL's reasons for a first answer that is not a TLS record: a plain-http server
answered the ClientHello with ``HTTP/1.1 400``."""


def not_tls(exc: BaseException) -> bool:
    """Whether ``exc`` says the server answered the handshake with something not TLS."""
    return isinstance(exc, ssl.SSLError) and exc.reason in _NOT_TLS


def not_tls_problem(url: str) -> tuple[str, str]:
    """What happened and what to do, for an https URL whose server speaks plain http (or
    anything but TLS)."""
    parts = urlsplit(url)
    what = f"the server at {url} does not speak TLS"
    if is_loopback_host(parts.hostname or ""):
        plain = parts._replace(scheme="http").geturl()
        return what, f"is it http? Then set TRACKSSL_URL={plain}"
    return what, "is it plain http? TRACKSSL_URL must name the API's https address"


def not_tls_words(url: str) -> str:
    """``not_tls_problem`` as one message."""
    return ": ".join(not_tls_problem(url))


def words(exc: BaseException, url: str, *, where: str | None = None) -> str:
    """One phrase for what the connection to ``url`` met; ``where`` names the peer when it
    is not ``url``'s host and port (a proxy)."""
    parts = urlsplit(url)
    name = where or parts.hostname
    where = where or parts.netloc.rpartition("@")[2]
    if not_tls(exc):
        return not_tls_words(url)
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or "").replace("_", " ").lower()
        return f"the TLS handshake with {where} failed" + (f" ({reason})" if reason else "")
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {where}"
    if isinstance(exc, ConnectionResetError):
        return f"{where} reset the connection"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {name}: {_lower(exc.strerror)}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{_lower(exc.strerror)} ({where})"
    return log.excerpt(str(exc) or type(exc).__name__, 200)


def advice(exc: BaseException) -> str:
    """What to do about the failure ``words`` describes, or "" when it says it already."""
    if isinstance(exc, ConnectionRefusedError):
        return "is the API running there, and is TRACKSSL_URL right?"
    if isinstance(exc, socket.gaierror):
        return "check TRACKSSL_URL and this host's DNS resolver"
    return ""


def _lower(text: str | None) -> str:
    text = text or "failed"
    return text[:1].lower() + text[1:]
