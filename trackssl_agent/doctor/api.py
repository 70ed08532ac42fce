"""The doctor's API checks: the connection taken apart step by step (DNS, proxy, TCP, TLS,
HTTP answer), then authentication through the real client, then the clock against the
API's ``Date`` header.

The client (``api``) hides which step failed behind its retries; here each step is done
once, by hand, with the client's own TLS context and proxy choice, so a failure names its
step. Every step runs under the caller's one absolute deadline: a socket that is still
busy at it is shut down, so a server that trickles cannot hold the doctor past it.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import unquote, urlsplit

from trackssl_agent import log
from trackssl_agent.base import ascii_values
from trackssl_agent.cloud import api, failures, transport
from trackssl_agent.cloud.schema import Domain
from trackssl_agent.config.config import Config
from trackssl_agent.doctor.values import Check, Status
from trackssl_agent.engine import probe
from trackssl_agent.engine.results import ProbeError
from trackssl_agent.engine.targets import Target
from trackssl_agent.engine.transport import Deadline
from trackssl_agent.errors import ApiError, ConfigError, UsageError

STEP_SECONDS = 10.0
"""Longest one step (a lookup, a connect, a handshake, an answer) may take."""
MAX_SKEW = 300.0
"""Clock skew past this is a warning: expiry maths and TLS validity checks both suffer."""
_MAX_HEAD = 64 * 1024
"""The most a proxy may send in answer to CONNECT before its blank line."""


@dataclass(frozen=True)
class Answer:
    """What the HTTP step got: the status and the server's clock."""

    status: int
    date: str | None
    """The ``Date`` header as sent, or None."""
    received: datetime
    """When the answer arrived, by this host's clock."""


class _StepFailed(Exception):
    """A step failed; its Check says how. Later steps are not tried."""

    def __init__(self, check: Check) -> None:
        super().__init__(check.detail)
        self.check = check


def _limit(deadline: Deadline) -> float:
    """Time for the next step: at most STEP_SECONDS, never past the deadline."""
    return min(STEP_SECONDS, deadline.remaining())


@contextlib.contextmanager
def _cut_at(sock: socket.socket, seconds: float) -> Iterator[None]:
    """Shut ``sock`` down if the block is still running after ``seconds``: socket timeouts
    restart on every byte, so a trickling peer would otherwise outlast any deadline."""

    def cut() -> None:
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)

    timer = threading.Timer(seconds, cut)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _shown_proxy(url: str) -> str:
    """The proxy for messages: scheme, host and port; user and password never shown."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or '?'}{port}"


def _resolve(name: str, host: str, port: int, deadline: Deadline) -> list[probe.AddrInfo]:
    """The addresses of ``host`` by the probe's bounded resolver; _StepFailed if none."""
    try:
        target = Target.from_parts(host, port, None)
    except UsageError as exc:
        raise _StepFailed(Check(name, Status.FAIL, str(exc), "check TRACKSSL_URL")) from None
    found = probe.resolve(target, socket.AF_UNSPEC, Deadline(_limit(deadline)))
    if isinstance(found, ProbeError):
        raise _StepFailed(
            Check(name, Status.FAIL, found.message, "check the name and this host's DNS resolver")
        )
    return found


def _connect(host: str, port: int, addresses: list[probe.AddrInfo], deadline: Deadline) -> tuple[
    socket.socket, Check
]:  # fmt: skip
    """A TCP connection to ``host``, and its line."""
    target = Target.from_parts(host, port, None)
    connected = probe.connect(target, addresses, Deadline(_limit(deadline)))
    if isinstance(connected, ProbeError):
        raise _StepFailed(
            Check(
                "api tcp", Status.FAIL, connected.message,
                "check that a firewall lets this host reach it (and HTTPS_PROXY if one is needed)",
            )
        )  # fmt: skip
    sock, address = connected
    return sock, Check("api tcp", Status.OK, f"connected to {target.endpoint} ({address})")


def _tunnel(sock: socket.socket, proxy: str, host: str, port: int, deadline: Deadline) -> Check:
    """Ask the HTTP proxy for a tunnel to ``host:port`` (CONNECT)."""
    parts = urlsplit(proxy)
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        lines.append(f"Proxy-Authorization: Basic {base64.b64encode(pair.encode()).decode()}")
    limit = _limit(deadline)
    sock.settimeout(limit)
    head = b""
    with _cut_at(sock, limit):
        try:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            while b"\r\n\r\n" not in head and len(head) < _MAX_HEAD:
                data = sock.recv(4096)
                if not data:
                    break
                head += data
        except OSError as exc:
            raise _StepFailed(_proxy_failed(proxy, f"no answer to CONNECT ({exc})")) from None
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    words = status_line.split(" ", 2)
    if len(words) < 2 or not words[0].startswith("HTTP/") or words[1] != "200":
        said = log.excerpt(status_line, 80) or "nothing"
        raise _StepFailed(_proxy_failed(proxy, f"it answered CONNECT with {said!r}"))
    return Check("api proxy", Status.OK, f"{_shown_proxy(proxy)} opened a tunnel to {authority}")


def _proxy_failed(proxy: str, why: str) -> Check:
    return Check(
        "api proxy", Status.FAIL, f"the proxy {_shown_proxy(proxy)} gave no tunnel: {why}",
        "check HTTPS_PROXY (user:password@ if the proxy wants them) and NO_PROXY",
    )  # fmt: skip


def _presented_issuer(tls: ssl.SSLSocket) -> str:
    """The issuer of the certificate the server presented, read after a failed handshake."""
    from trackssl_agent.engine import certificates  # noqa: PLC0415 - only on this path

    public = getattr(tls, "get_unverified_chain", None)  # Python 3.13+
    inner = getattr(tls, "_sslobj", None)  # 3.11 and 3.12: the private one (FIELD-NOTES)
    chain = public() if public is not None else (inner.get_unverified_chain() if inner else None)
    if not chain:
        return "an issuer that could not be read"
    leaf = chain[0]
    der = leaf if isinstance(leaf, bytes) else leaf.public_bytes(2)  # _ssl.ENCODING_DER
    return certificates.summarize(der).issuer or "an issuer that could not be read"


def _handshake(sock: socket.socket, cfg: Config, host: str, deadline: Deadline) -> tuple[
    ssl.SSLSocket, Check
]:  # fmt: skip
    """TLS with the client's own context: the OS trust store plus TRACKSSL_CA_BUNDLE."""
    store = "the system trust store" + (f" and {cfg.ca_bundle}" if cfg.ca_bundle else "")
    try:
        context = transport.tls_context(cfg.ca_bundle)
    except ApiError as exc:
        raise _StepFailed(
            Check("api tls", Status.FAIL, str(exc), "point TRACKSSL_CA_BUNDLE at a PEM file")
        ) from None
    limit = _limit(deadline)
    sock.settimeout(limit)
    tls = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
    with _cut_at(tls, limit):
        try:
            tls.do_handshake()
        except ssl.SSLCertVerificationError as exc:
            issuer = log.printable(_presented_issuer(tls))
            why = exc.verify_message or exc.reason or "not verified"
            raise _StepFailed(
                Check(
                    "api tls",
                    Status.FAIL,
                    f"the certificate {host} presented did not verify against {store} "
                    f"({why}); it was issued by {issuer}",
                    f"if {issuer} is your TLS-inspecting proxy's CA, install it in the system "
                    "store or point TRACKSSL_CA_BUNDLE at it (PEM); else check TRACKSSL_URL",
                )
            ) from None
        except OSError as exc:  # ssl.SSLError, a reset, the cut at the deadline
            if failures.not_tls(exc):
                detail, fix = failures.not_tls_problem(cfg.url)
                raise _StepFailed(Check("api tls", Status.FAIL, detail, fix)) from None
            raise _StepFailed(
                Check(
                    "api tls",
                    Status.FAIL,
                    failures.words(exc, cfg.url),
                    "check TRACKSSL_URL; a proxy or firewall may be in the way",
                )
            ) from None
    return tls, Check("api tls", Status.OK, f"{tls.version()}, verified against {store}")


def _http(sock: socket.socket, host: str, port: int, path: str, deadline: Deadline) -> Answer:
    """One GET of the API's base path, without the tokens: any answer proves HTTP works."""
    limit = _limit(deadline)
    sock.settimeout(limit)
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: {api.user_agent()}\r\n"
        "Accept: application/json\r\nConnection: close\r\n\r\n"
    )
    with _cut_at(sock, limit):
        try:
            sock.sendall(request.encode())
            response = http.client.HTTPResponse(sock)
            response.begin()
        except (OSError, http.client.HTTPException) as exc:
            why = "no answer" if isinstance(exc, TimeoutError | OSError) else "not HTTP"
            raise _StepFailed(
                Check(
                    "api http",
                    Status.FAIL,
                    f"{why} from {authority} within {limit:.0f} s ({type(exc).__name__})",
                    "the API or something in between holds the connection; check TRACKSSL_URL "
                    "and any proxy or firewall on the way",
                )
            ) from None
        finally:
            with contextlib.suppress(OSError):
                sock.close()
    return Answer(response.status, response.getheader("Date"), datetime.now(UTC))


def connection(cfg: Config, deadline: Deadline) -> tuple[list[Check], Answer | None]:
    """The connection steps in order, each a line; the HTTP answer when all worked."""
    parts = urlsplit(cfg.url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    proxy = _proxy_for(cfg.url, parts.scheme)
    checks: list[Check] = []
    sock: socket.socket | None = None
    try:
        if proxy is None:
            addresses = _resolve("api dns", host, port, deadline)
            shown = ", ".join(sorted({str(a[4][0]) for a in addresses}))
            checks.append(Check("api dns", Status.OK, f"{host} is {shown}"))
            checks.append(Check("api proxy", Status.OK, _direct(cfg.url)))
            sock, line = _connect(host, port, addresses, deadline)
            checks.append(line)
        else:
            checks.append(Check("api dns", Status.OK, f"{host}: the proxy resolves it"))
            sock = _via_proxy(proxy, host, port, deadline, checks)
        if parts.scheme == "https":
            sock, line = _handshake(sock, cfg, host, deadline)
            checks.append(line)
        else:
            checks.append(Check("api tls", Status.OK, "none: plain http to a loopback host"))
        answer = _http(sock, host, port, parts.path.rstrip("/") + "/", deadline)
    except _StepFailed as failed:
        if sock is not None:
            sock.close()
        return [*checks, failed.check], None
    except TimeoutError:  # the deadline passed between steps
        if sock is not None:
            sock.close()
        return [*checks, _out_of_time("api connection")], None
    checks.append(Check("api http", Status.OK, f"HTTP {answer.status} to a GET without the tokens"))
    return checks, answer


def _direct(url: str) -> str:
    """The proxy line when none is used."""
    if api.proxiable(url):
        return "none: the API is reached directly"
    # Whatever HTTP_PROXY says: the token must not reach a proxy in clear.
    return "none: plain http to a loopback host never goes through a proxy"


def _proxy_for(url: str, scheme: str) -> str | None:
    proxies = api.environ_proxies(url)
    return proxies.get(scheme) or proxies.get("all") or None


def _via_proxy(proxy: str, host: str, port: int, deadline: Deadline, checks: list[Check]) -> (
    socket.socket
):  # fmt: skip
    """A tunnel through the HTTP proxy to ``host:port``."""
    parts = urlsplit(proxy)
    if parts.scheme != "http" or not parts.hostname:
        raise _StepFailed(
            Check(
                "api proxy", Status.WARN,
                f"{_shown_proxy(proxy)}: the doctor's own steps speak only http:// proxies; "
                "the authentication check below goes through it",
                "none needed if authentication passes",
            )
        )  # fmt: skip
    proxy_port = parts.port or 80
    addresses = _resolve("api proxy", parts.hostname, proxy_port, deadline)
    sock, line = _connect(parts.hostname, proxy_port, addresses, deadline)
    try:
        checks.append(Check("api tcp", Status.OK, f"{line.detail} (the proxy)"))
        checks.append(_tunnel(sock, proxy, host, port, deadline))
    except BaseException:
        sock.close()
        raise
    return sock


def _out_of_time(name: str) -> Check:
    return Check(
        name, Status.FAIL, "not checked: the doctor's time limit ran out",
        "look at the steps above that were slow",
    )  # fmt: skip


def authentication(cfg: Config, deadline: Deadline) -> tuple[Check, list[Domain] | None]:
    """``domains.json`` fetched once with the tokens, as a cycle would."""
    try:
        auth, agent = cfg.require_api()
        limit = _limit(deadline)
    except ConfigError:
        return Check("auth", Status.FAIL, "not checked: a token is missing", "see tokens"), None
    except TimeoutError:
        return _out_of_time("auth"), None
    settings = api.ApiSettings(
        url=cfg.url, auth_token=auth, agent_token=agent, ca_bundle=cfg.ca_bundle,
        connect_timeout=limit, read_timeout=limit, request_deadline=limit, budget=limit,
        retries=0,
    )  # fmt: skip
    try:
        with api.ApiClient(settings, sleep=lambda _seconds: None) as client:
            domains, skipped = client.fetch_domains()
    except api.AuthError as exc:
        return Check("auth", Status.FAIL, str(exc), _auth_fix(str(exc))), None
    except ApiError as exc:
        return Check(
            "auth", Status.FAIL, f"the domain list was not fetched: {exc}",
            "fix the connection steps above first",
        ), None  # fmt: skip
    detail = f"{len(domains)} domains to check"
    if not skipped.count:
        return Check("auth", Status.OK, f"{detail}; both tokens accepted"), domains
    why = "; ".join(skipped.lines()[:3])
    return Check(
        "auth", Status.WARN, f"{detail}; {skipped.count} entries would be skipped: {why}",
        "correct those entries in TrackSSL",
    ), domains  # fmt: skip


def _auth_fix(message: str) -> str:
    if "TRACKSSL_AGENT_TOKEN" in message:
        return (
            "copy this agent's token from the TrackSSL agents page into TRACKSSL_AGENT_TOKEN, "
            "and check TRACKSSL_URL"
        )
    return "copy the API key from the TrackSSL settings into TRACKSSL_AUTH_TOKEN"


def clock(answer: Answer | None) -> Check:
    """This host's clock against the API's ``Date`` header."""
    if answer is None:
        return Check("clock", Status.WARN, "not checked: the API gave no answer", "see above")
    if not answer.date:
        return Check("clock", Status.WARN, "not checked: the API sent no Date header", "")
    server = ascii_values.http_date(answer.date)
    if server is None:
        shown = log.excerpt(answer.date, 40)
        return Check("clock", Status.WARN, f"the API's Date header {shown!r} is not a date", "")
    skew = (answer.received - server).total_seconds()
    ahead = "ahead of" if skew > 0 else "behind"
    detail = f"this host is {abs(skew):.0f} s {ahead} the API's clock"
    if abs(skew) > MAX_SKEW:
        return Check(
            "clock", Status.WARN, detail,
            "synchronise the clock (NTP): expiry dates and TLS validity depend on it",
        )  # fmt: skip
    return Check("clock", Status.OK, detail)
