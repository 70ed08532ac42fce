"""STARTTLS and pre-TLS dialogues: one small function (or CodedDialogue) per protocol.

Each dialogue waits for every server reply before its next command and raises
DialogueError with the server's own words when STARTTLS is refused or not offered.
It returns the RecordIO the TLS handshake runs over: the connection itself for every
protocol but mssql, whose TLS records travel inside TDS pre-login packets.
The text protocols live here; the binary ones (ldap, databases, rdp) in ``starttls_binary``.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from dataclasses import dataclass

from trackssl_agent.engine.transport import Conn, DialogueError, RecordIO, printable

Dialogue = Callable[[Conn, str], RecordIO]

_CODE = re.compile(rb"^(\d{3})([ -]|\r?\n)")
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
MAX_REPLY = 64 * 1024
"""A multi-line reply longer than this is not a real server's; it would only eat memory."""


def _never_ends(first: bytes) -> DialogueError:
    return DialogueError(f"the server's reply never ends: {printable(first)!r}...")


def read_coded_reply(conn: Conn) -> tuple[int, bytes]:
    """Read one SMTP/LMTP/FTP/NNTP reply: ``250-...`` lines up to the final ``250 ...``.

    FTP lets the lines between ``220-`` and ``220 `` carry anything (RFC 959 4.2), so only
    the first and the closing line must start with the code. The size is counted as lines
    come: a flood of ``220-`` lines costs linear time and ends at ``MAX_REPLY``.
    """
    first = conn.read_line()
    match = _CODE.match(first)
    if match is None:
        raise DialogueError(f"the server's reply is not a status line: {printable(first)!r}")
    code = match.group(1)
    lines = [first]
    size = len(first)
    if match.group(2) == b"-":
        while True:
            line = conn.read_line()
            lines.append(line)
            if line.startswith(code) and line[3:4] in (b" ", b"\r", b"\n"):
                break
            size += len(line)
            if size > MAX_REPLY:
                raise _never_ends(first)
    return int(code), b"".join(lines)


def _expect_code(conn: Conn, wanted: tuple[int, ...], what: str) -> bytes:
    """Read a coded reply, skipping 1xx preliminaries; DialogueError unless its code is wanted."""
    code, reply = read_coded_reply(conn)
    while 100 <= code < 200 and 100 not in wanted:
        code, reply = read_coded_reply(conn)
    if code not in wanted:
        raise DialogueError(f"{what}: {printable(reply)!r}")
    return reply


@dataclass(frozen=True)
class CodedDialogue:
    """A protocol whose replies start with three digits: greet, optionally hello, STARTTLS."""

    greeting: tuple[int, ...]
    """The codes of a greeting that lets the session go on."""
    hello: str | None
    """EHLO/LHLO: SMTP and LMTP offer STARTTLS only after it."""
    command: str
    """The command that asks for TLS."""
    ready: int
    """The code that says TLS starts now."""

    def __call__(self, conn: Conn, host: str) -> RecordIO:
        _expect_code(conn, self.greeting, "the server refused the session")
        if self.hello is not None:
            conn.send(f"{self.hello} {_helo_name(conn)}\r\n".encode("ascii"))
            _expect_code(conn, (250,), f"the server rejected {self.hello}")
        conn.send(f"{self.command}\r\n".encode("ascii"))
        _expect_code(conn, (self.ready,), f"the server refused {self.command}")
        return conn


def _helo_name(conn: Conn) -> str:
    """RFC 5321 4.1.4: the client's own FQDN, else its address literal.

    Never the server's name: anti-spoofing rules reject a client that greets as the server.
    """
    name = socket.gethostname()
    if "." in name and _HOSTNAME.fullmatch(name):
        return name
    address = str(conn.sock.getsockname()[0]).split("%", 1)[0]
    return f"[IPv6:{address}]" if ":" in address else f"[{address}]"


def imap(conn: Conn, host: str) -> RecordIO:
    """RFC 3501 6.2.1: greeting ``* OK``, then ``STARTTLS`` until its tagged ``OK``."""
    greeting = conn.read_line()
    if not greeting.upper().startswith(b"* OK"):
        # PREAUTH means already authenticated, where STARTTLS is not allowed; BYE is a refusal.
        raise DialogueError(f"the server refused the session: {printable(greeting)!r}")
    conn.send(b"a1 STARTTLS\r\n")
    first = b""
    size = 0
    while True:
        line = conn.read_line()
        if line.startswith(b"a1 "):
            break
        # Untagged data before the tagged reply is allowed and ignored, up to MAX_REPLY.
        first = first or line
        size += len(line)
        if size > MAX_REPLY:
            raise _never_ends(first)
    if not line[3:].upper().startswith(b"OK"):
        raise DialogueError(f"the server refused STARTTLS: {printable(line)!r}")
    return conn


def pop3(conn: Conn, host: str) -> RecordIO:
    """RFC 2595 4: greeting ``+OK``, then ``STLS``, ``+OK``."""
    greeting = conn.read_line()
    if not greeting.startswith(b"+OK"):
        raise DialogueError(f"the server refused the session: {printable(greeting)!r}")
    conn.send(b"STLS\r\n")
    reply = conn.read_line()
    if not reply.startswith(b"+OK"):
        raise DialogueError(f"the server refused STLS: {printable(reply)!r}")
    return conn


_SIEVE_END = re.compile(rb"^(OK|NO|BYE)\b", re.IGNORECASE)


def _sieve_response(conn: Conn) -> tuple[bytes, bytes]:
    """Read lines up to the one starting with OK, NO or BYE (RFC 5804 4)."""
    lines = []
    size = 0
    while True:
        line = conn.read_line()
        lines.append(line)
        match = _SIEVE_END.match(line)
        if match:
            return match.group(1).upper(), b"".join(lines)
        size += len(line)
        if size > MAX_REPLY:
            raise _never_ends(lines[0])


def sieve(conn: Conn, host: str) -> RecordIO:
    """RFC 5804 2.2: capability lines then ``OK``, then ``STARTTLS``, ``OK``."""
    status, greeting = _sieve_response(conn)
    if status != b"OK":
        raise DialogueError(f"the server refused the session: {printable(greeting)!r}")
    conn.send(b"STARTTLS\r\n")
    status, reply = _sieve_response(conn)
    if status != b"OK":
        raise DialogueError(f"the server refused STARTTLS: {printable(reply)!r}")
    return conn


_TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"
_FEATURES_END = re.compile(rb"</(?:[\w.-]+:)?features\s*>|<(?:[\w.-]+:)?features\b[^>]*/>")
_STREAM_ERROR = re.compile(rb"</(?:[\w.-]+:)?(?:error|stream)\s*>")
_CONDITION = re.compile(rb"<([a-z-]+)[^>]*urn:ietf:params:xml:ns:xmpp-streams")
_XML_TEXT = re.compile(rb"<text[^>]*>([^<]*)</text>")
_MAX_XML = 64 * 1024


def _xmpp_words(xml: bytes) -> str:
    """A stream error's condition and text, else the XML itself, as the server's words."""
    conditions = [c.decode() for c in _CONDITION.findall(xml) if c != b"text"]
    text = _XML_TEXT.search(xml)
    if conditions or text:
        words = " ".join(conditions)
        return f"{words}: {printable(text.group(1))}" if text else words
    return printable(xml)


def _read_stream_features(conn: Conn) -> bytes:
    """Read XML tag by tag until the stream features end, or the stream ends in an error.

    Only the newest tag is searched: both ends are single tags, and re-searching all the
    XML collected on each tag made an endless stream cost quadratic time.
    """
    tags: list[bytes] = []
    size = 0
    while size < _MAX_XML:
        tag = conn.read_until(b">")
        tags.append(tag)
        size += len(tag)
        if _FEATURES_END.search(tag):
            return b"".join(tags)
        if _STREAM_ERROR.search(tag):
            raise DialogueError(f"the server closed the stream: {_xmpp_words(b''.join(tags))}")
    raise DialogueError("the server sent no stream features")


def _xmpp(namespace: str) -> Dialogue:
    def dialogue(conn: Conn, host: str) -> RecordIO:
        """RFC 6120 5.4: open a stream to the domain, read features, starttls, proceed."""
        conn.send(
            "<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams'"
            f" xmlns='{namespace}' to='{_xml_attr(host)}' version='1.0'>".encode()
        )
        features = _read_stream_features(conn)
        if _TLS_NS.encode() not in features:
            raise DialogueError(f"the server does not offer STARTTLS: {printable(features)!r}")
        conn.send(f"<starttls xmlns='{_TLS_NS}'/>".encode())
        reply = conn.read_until(b">")
        if b"<proceed" not in reply:
            if b"<failure" not in reply:
                reply += conn.read_until(b">", limit=_MAX_XML)
            raise DialogueError(f"the server refused STARTTLS: {printable(reply)!r}")
        return conn

    return dialogue


def _xml_attr(value: str) -> str:
    return value.replace("&", "&amp;").replace("'", "&apos;").replace("<", "&lt;")


# The dialogues that are instances rather than functions; ``dialogues.DIALOGUES`` pairs each
# dialogue with its protocol.
# RFC 3207: EHLO before STARTTLS; LMTP (RFC 2033) is the same with LHLO.
smtp = CodedDialogue(greeting=(220,), hello="EHLO", command="STARTTLS", ready=220)
lmtp = CodedDialogue(greeting=(220,), hello="LHLO", command="STARTTLS", ready=220)
# RFC 4217 4: AUTH TLS, 234.
ftp = CodedDialogue(greeting=(220,), hello=None, command="AUTH TLS", ready=234)
# RFC 4642 2.2: greeting 200 or 201, STARTTLS, 382.
nntp = CodedDialogue(greeting=(200, 201), hello=None, command="STARTTLS", ready=382)
xmpp = _xmpp("jabber:client")
xmpp_server = _xmpp("jabber:server")


def negotiate(dialogue: Dialogue, conn: Conn, host: str) -> RecordIO:
    """Run ``dialogue`` (a protocol's, from ``dialogues.DIALOGUES``) on ``conn``; ``host`` is
    the name the server knows."""
    io = dialogue(conn, host)
    stray = conn.pending()
    if stray:
        # Plaintext queued behind the "go ahead" would be taken for TLS-protected data by
        # a client that reads on (CVE-2011-0411 and kin); a probe just refuses it.
        raise DialogueError(
            f"the server sent {len(stray)} unexpected bytes before TLS started "
            f"({printable(stray, 60)!r}; possible STARTTLS injection)"
        )
    return io
