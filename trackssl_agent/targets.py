"""TARGET parsing (SPEC section 2): host, port and the dialogue that leads to TLS."""

from __future__ import annotations

import ipaddress
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import idna

from trackssl_agent import protocols
from trackssl_agent.errors import UsageError
from trackssl_agent.protocols import Protocol

DEFAULT_PORT = 443

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.DOTALL)
_ASCII_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_BAD_CHARS = re.compile(r"[\s\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Target:
    """One endpoint to probe, fully decided: no lookups happen here."""

    text: str
    """The target as the user or the API wrote it."""
    host: str
    """Host name or IP literal, without brackets."""
    port: int
    """TCP port, 1-65535."""
    starttls: Protocol | None
    """The dialogue before TLS, or None for direct TLS."""
    is_ip: bool
    """True when ``host`` is an IP literal (no SNI, no DNS)."""

    @classmethod
    def from_parts(cls, host: str, port: int, starttls: Protocol | None) -> Target:
        """A Target from parts already apart (a domain-list entry), checked as
        ``parse_target`` checks them; UsageError naming ``host:port`` if one is invalid.

        ``host`` is a name or an IP literal (an IPv6 one may be bracketed); ``starttls``
        is the dialogue already decided. ``text`` is ``host:port``, IPv6 bracketed.
        """
        bracketed = host.startswith("[") and host.endswith("]")
        shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
        text = f"{shown}:{port}"
        _check_characters(text)
        inner = host[1:-1] if bracketed else host
        if not inner:
            raise UsageError(f"invalid target {text!r}: the host is empty")
        if not 1 <= port <= 65535:
            raise UsageError(f"invalid target {text!r}: port {port} is outside 1-65535")
        name, is_ip = _check_host(text, inner, bracketed=bracketed)
        return cls(text=text, host=name, port=port, starttls=starttls, is_ip=is_ip)

    @property
    def endpoint(self) -> str:
        """``host:port`` with IPv6 literals bracketed, for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def sni_name(self) -> str | None:
        """The default SNI: the IDNA-encoded name without a trailing dot; none for IPs."""
        if self.is_ip:
            return None
        return encode_hostname(self.host)


def encode_hostname(name: str) -> str:
    """Return the ASCII form of ``name`` (UTS 46 for non-ASCII), trailing dot stripped."""
    name = name.rstrip(".")
    if name.isascii():
        return name.lower()
    return idna.encode(name, uts46=True).decode("ascii")


def _check_hostname(text: str, host: str) -> str:
    """Validate a DNS name; return it unchanged or raise a usage error quoting ``text``."""
    try:
        ascii_name = encode_hostname(host)
    except idna.IDNAError as exc:
        raise UsageError(
            f"invalid target {text!r}: host {host!r} is not a valid name ({exc})"
        ) from None
    if not ascii_name or len(ascii_name) > 253:
        raise UsageError(f"invalid target {text!r}: host name is empty or too long")
    for label in ascii_name.split("."):
        if not _ASCII_LABEL.match(label):
            raise UsageError(f"invalid target {text!r}: {host!r} is not a valid host name")
    return host


def _check_characters(text: str) -> None:
    # Invisible characters too (U+FEFF, U+00AD, bidi controls): IDNA drops some of them,
    # so a name shown one way would be contacted as another.
    if _BAD_CHARS.search(text) or not text.isprintable():
        raise UsageError(
            f"invalid target {text!r}: it contains spaces, control or invisible characters"
        )


def _check_host(text: str, host: str, *, bracketed: bool) -> tuple[str, bool]:
    """``(host, is_ip)``: an IP literal in its normal form, or a valid DNS name unchanged.

    ``bracketed`` says the host was written ``[...]``, which only an IPv6 literal may be.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if ":" in host or bracketed:
            raise UsageError(
                f"invalid target {text!r}: {host!r} is not a valid IPv6 address"
            ) from None
        return _check_hostname(text, host), False
    if bracketed and address.version != 6:
        raise UsageError(f"invalid target {text!r}: brackets are for IPv6 addresses only")
    return str(address), True


def _parse_port(text: str, port_text: str) -> int:
    if not port_text.isdigit() or not port_text.isascii():
        raise UsageError(f"invalid target {text!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise UsageError(f"invalid target {text!r}: port {port} is outside 1-65535")
    return port


def _split_host_port(text: str, rest: str) -> tuple[str, str | None]:
    """Split ``host[:port]`` where host may be ``[v6]`` or a bare IPv6 literal."""
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise UsageError(f"invalid target {text!r}: missing ']' after the IPv6 address")
        host, after = rest[1:end], rest[end + 1 :]
        if after == "":
            return host, None
        if not after.startswith(":"):
            raise UsageError(f"invalid target {text!r}: unexpected {after!r} after ']'")
        return host, after[1:]
    if rest.count(":") > 1:
        return rest, None  # a bare IPv6 literal such as ::1 carries no port
    if ":" in rest:
        host, port = rest.split(":", 1)
        return host, port
    return rest, None


def parse_target(text: str, *, starttls: str = protocols.AUTO) -> Target:
    """Parse a TARGET of SPEC section 2; ``starttls`` is the ``--starttls`` option value.

    Raises UsageError naming the offending text for anything invalid.
    """
    if starttls not in protocols.STARTTLS_CHOICES:
        raise UsageError(f"unknown --starttls value {starttls!r}")
    _check_characters(text)
    if not text:
        raise UsageError("invalid target '': it is empty")
    scheme_protocol: Protocol | None = None
    default_port: int | None = DEFAULT_PORT
    has_scheme = False
    rest = text
    match = _SCHEME.match(text)
    if match:
        scheme = match.group(1).lower()
        if scheme not in protocols.SCHEMES:
            known = ", ".join(sorted(protocols.SCHEMES))
            raise UsageError(f"invalid target {text!r}: unknown scheme {scheme!r} (known: {known})")
        scheme_protocol, default_port = protocols.SCHEMES[scheme]
        has_scheme = True
        rest = match.group(2)
        if rest.endswith("/"):
            rest = rest[:-1]
        if "/" in rest or "?" in rest or "@" in rest:
            raise UsageError(f"invalid target {text!r}: only scheme://host[:port] is accepted")
    host, port_text = _split_host_port(text, rest)
    if not host:
        raise UsageError(f"invalid target {text!r}: the host is empty")
    if port_text is None:
        if default_port is None:
            raise UsageError(f"invalid target {text!r}: this scheme needs an explicit :port")
        port = default_port
    else:
        port = _parse_port(text, port_text)
    host, is_ip = _check_host(text, host, bracketed=rest.startswith("["))
    chosen = protocols.select(
        scheme_protocol=scheme_protocol, has_scheme=has_scheme, port=port, option=starttls
    )
    return Target(text=text, host=host, port=port, starttls=chosen, is_ip=is_ip)


def read_targets_file(lines: list[str], *, source: str, starttls: str) -> list[Target]:
    """Parse a targets file: one TARGET a line, blank lines and ``#`` comments ignored."""
    targets: list[Target] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip().lstrip("\ufeff")
        if not line:
            continue
        try:
            targets.append(parse_target(line, starttls=starttls))
        except UsageError as exc:
            raise UsageError(f"{source}, line {number}: {exc}") from None
    return targets


STDIN = "-"
"""``--targets -``: the targets come from standard input (SPEC section 4a)."""


def read_targets_bytes(path: Path) -> bytes:
    """The bytes of ``--targets FILE``; standard input's for ``-``."""
    if str(path) == STDIN:
        return sys.stdin.buffer.read()
    return path.read_bytes()


def read_targets_path(path: Path, *, starttls: str) -> list[Target]:
    """The targets of ``--targets FILE``; UsageError when it cannot be read or names none."""
    try:
        text = read_targets_bytes(path).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--targets {path}: cannot read it: {exc}") from None
    targets = read_targets_file(text.splitlines(), source=str(path), starttls=starttls)
    if not targets:
        raise UsageError(f"--targets {path}: the file names no target")
    return targets
