"""TARGET parsing (SPEC section 2): host, port and the dialogue that leads to TLS; targets
files, read line by line within their bounds."""

from __future__ import annotations

import ipaddress
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from trackssl_agent.base.file_errors import cannot_read
from trackssl_agent.engine import protocols
from trackssl_agent.engine.protocols import Protocol
from trackssl_agent.errors import UsageError

DEFAULT_PORT = 443

MAX_FILE_BYTES = 16 * 1024 * 1024
"""A targets file larger than this (16 MiB) is refused."""
MAX_TARGETS = 100_000
"""A targets file naming more targets than this is refused: each costs some 200 bytes
parsed and a result probed, and 16 MiB of one-letter names would be 8 million."""
MAX_LINE_BYTES = 4096
"""A targets-file line longer than this (its LF or CRLF not counted) is refused: a target is
at most a scheme, 253 characters of name and a port, and a comment need not be longer."""
SHOWN_BAD_LINES = 10
"""The bad lines of a targets file named one by one; the rest are counted."""
QUOTE_CHARS = 80
"""Characters of a bad target quoted in its error, at most."""

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
            raise UsageError(f"invalid target {quote(text)}: the host is empty")
        if not 1 <= port <= 65535:
            raise UsageError(f"invalid target {quote(text)}: port {port} is outside 1-65535")
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
    import idna  # noqa: PLC0415 - its tables take 7 ms to load: only for a non-ASCII name

    return idna.encode(name, uts46=True).decode("ascii")


def _check_hostname(text: str, host: str) -> str:
    """Validate a DNS name; return it unchanged or raise a usage error quoting ``text``."""
    try:
        ascii_name = encode_hostname(host)
    except UnicodeError as exc:  # idna.IDNAError is one
        reason = str(exc)
        reason = reason if len(reason) <= QUOTE_CHARS else reason[:QUOTE_CHARS] + "..."
        raise UsageError(
            f"invalid target {quote(text)}: host {quote(host)} is not a valid name ({reason})"
        ) from None
    if not ascii_name or len(ascii_name) > 253:
        raise UsageError(f"invalid target {quote(text)}: host name is empty or too long")
    for label in ascii_name.split("."):
        if not _ASCII_LABEL.match(label):
            raise UsageError(
                f"invalid target {quote(text)}: {quote(host)} is not a valid host name"
            )
    return host


def _check_characters(text: str) -> None:
    # Invisible characters too (U+FEFF, U+00AD, bidi controls): IDNA drops some of them,
    # so a name shown one way would be contacted as another.
    if _BAD_CHARS.search(text) or not text.isprintable():
        raise UsageError(
            f"invalid target {quote(text)}: it contains spaces, control or invisible characters"
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
                f"invalid target {quote(text)}: {quote(host)} is not a valid IPv6 address"
            ) from None
        return _check_hostname(text, host), False
    if bracketed and address.version != 6:
        raise UsageError(f"invalid target {quote(text)}: brackets are for IPv6 addresses only")
    return str(address), True


def _parse_port(text: str, port_text: str) -> int:
    if not port_text.isdigit() or not port_text.isascii():
        raise UsageError(f"invalid target {quote(text)}: port {quote(port_text)} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise UsageError(f"invalid target {quote(text)}: port {port} is outside 1-65535")
    return port


def _split_host_port(text: str, rest: str) -> tuple[str, str | None]:
    """Split ``host[:port]`` where host may be ``[v6]`` or a bare IPv6 literal."""
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise UsageError(f"invalid target {quote(text)}: missing ']' after the IPv6 address")
        host, after = rest[1:end], rest[end + 1 :]
        if after == "":
            return host, None
        if not after.startswith(":"):
            raise UsageError(f"invalid target {quote(text)}: unexpected {quote(after)} after ']'")
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
            raise UsageError(
                f"invalid target {quote(text)}: unknown scheme {quote(scheme)} (known: {known})"
            )
        scheme_protocol, default_port = protocols.SCHEMES[scheme]
        has_scheme = True
        rest = match.group(2)
        if rest.endswith("/"):
            rest = rest[:-1]
        if "/" in rest or "?" in rest or "@" in rest:
            raise UsageError(f"invalid target {quote(text)}: only scheme://host[:port] is accepted")
    host, port_text = _split_host_port(text, rest)
    if not host:
        raise UsageError(f"invalid target {quote(text)}: the host is empty")
    if port_text is None:
        if default_port is None:
            raise UsageError(f"invalid target {quote(text)}: this scheme needs an explicit :port")
        port = default_port
    else:
        port = _parse_port(text, port_text)
    host, is_ip = _check_host(text, host, bracketed=rest.startswith("["))
    chosen = protocols.select(
        scheme_protocol=scheme_protocol, has_scheme=has_scheme, port=port, option=starttls
    )
    return Target(text=text, host=host, port=port, starttls=chosen, is_ip=is_ip)


def quote(text: str) -> str:
    """``text`` quoted for a message: its repr, or the repr of its first ``QUOTE_CHARS``
    characters and ``...`` with the length, so that a long line is not echoed whole."""
    if len(text) <= QUOTE_CHARS:
        return repr(text)
    return f"{text[:QUOTE_CHARS]!r}... ({len(text):,} characters)"


def read_targets_file(lines: Iterable[str], *, source: str, starttls: str) -> list[Target]:
    """Parse a targets file: one TARGET a line, blank lines and ``#`` comments ignored;
    UsageError naming the line of a bad target, or when there are more than
    ``MAX_TARGETS``."""
    targets: list[Target] = []
    bad: list[str] = []
    bad_count = 0
    for number, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip().lstrip("\ufeff")
        if not line:
            continue
        if len(targets) + bad_count == MAX_TARGETS:
            raise UsageError(
                f"{source}, line {number}: more than {MAX_TARGETS:,} targets, the limit for a "
                "targets file; split it into several files"
            )
        try:
            targets.append(parse_target(line, starttls=starttls))
        except UsageError as exc:
            # Every bad line is counted and the first few named: fixing a file one line
            # per run is slow (issue 22).
            bad_count += 1
            if len(bad) < SHOWN_BAD_LINES:
                bad.append(f"{source}, line {number}: {exc}")
    if bad_count == 1:
        raise UsageError(bad[0])
    if bad_count:
        shown = "each named above" if bad_count == len(bad) else f"the first {len(bad)} above"
        raise UsageError(
            f"{source}: {bad_count:,} lines are not valid targets ({shown}); nothing was "
            "probed: correct them and run again",
            details=tuple(bad),
        )
    return targets


STDIN = "-"
"""``--targets -``: the targets come from standard input (SPEC section 4a)."""


def read_targets_stream(stream: BinaryIO, *, source: str, starttls: str) -> list[Target]:
    """The targets of a targets file read from ``stream`` (a file, later stdin) a line at
    a time: UsageError naming ``source`` and the limit for a file beyond
    ``MAX_FILE_BYTES`` or a line beyond ``MAX_LINE_BYTES`` (``/dev/zero`` is one endless
    line), for text that is not UTF-8, and for a file that names no target."""
    targets = read_targets_file(_lines(stream, source), source=source, starttls=starttls)
    if not targets:
        raise UsageError(f"--targets {source}: the file names no target")
    return targets


def _lines(stream: BinaryIO, source: str) -> Iterator[str]:
    """The lines of ``stream`` as ``str.splitlines`` would cut the decoded file (so a CR
    ends a line too, and the numbers match an editor's), reading at most one line beyond
    the bounds."""
    total = 0
    number = 0
    while chunk := _read_line(stream, source):
        total += len(chunk)
        content = chunk.removesuffix(b"\n").removesuffix(b"\r")
        if len(content) > MAX_LINE_BYTES:
            raise UsageError(
                f"--targets {source}: line {number + 1} is longer than {MAX_LINE_BYTES:,} "
                "bytes, the limit for a targets-file line; is this a targets file?"
            )
        if total > MAX_FILE_BYTES:
            raise UsageError(
                f"--targets {source}: the file is larger than {MAX_FILE_BYTES >> 20} MiB, the "
                "limit for a targets file; split it into several files"
            )
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError(
                f"--targets {source}: line {number + 1} is not UTF-8 text; save the file as UTF-8"
            ) from None
        for line in text.splitlines():
            number += 1
            yield line


def _read_line(stream: BinaryIO, source: str) -> bytes:
    """One line with its newline (LF or CRLF), or ``MAX_LINE_BYTES + 2`` bytes of a longer
    one; b"" at the end."""
    try:
        return stream.readline(MAX_LINE_BYTES + 2)
    except OSError as exc:  # a folder opens on some systems and fails at the first read
        raise UsageError(f"--targets {source}: cannot read it: {cannot_read(exc)}") from None


def read_targets_path(path: Path, *, starttls: str) -> list[Target]:
    """The targets of ``--targets FILE``; UsageError when it cannot be read, is beyond the
    bounds or names none. ``-`` reads standard input, within the same bounds."""
    if str(path) == STDIN:
        return read_targets_stream(sys.stdin.buffer, source=STDIN, starttls=starttls)
    try:
        stream = path.open("rb")
    except OSError as exc:
        raise UsageError(f"--targets {path}: cannot read it: {cannot_read(exc)}") from None
    with stream:
        return read_targets_stream(stream, source=str(path), starttls=starttls)
