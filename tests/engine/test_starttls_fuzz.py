"""Property-based tests (issue 9, part 8) for every STARTTLS reply parser and the TLS record
reader: hostile byte streams, cut into chunks, sent over a real loopback connection.

Whatever the server sends, a dialogue returns, or raises DialogueError, TimeoutError or an
OSError (what the probe's STARTTLS stage turns into a clear error), within its deadline.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import hostile_servers as hostile
from trackssl_agent.engine import starttls, tls_records
from trackssl_agent.engine.dialogues import DIALOGUES
from trackssl_agent.engine.protocols import Protocol
from trackssl_agent.engine.starttls_binary import prelogin_options, tds_packets
from trackssl_agent.engine.transport import Conn, Deadline, DialogueError

DEADLINE = 2.0
BOUNDED = settings(
    max_examples=30,
    deadline=3000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
HANDLED = (DialogueError, TimeoutError, OSError)

_CODED = [b"220", b"220-", b"220 ", b"250-", b"250 ", b"234 ", b"382 ", b"200 ", b"201 ",
          b"120 ", b"554 ", b"STARTTLS", b"mx.test"]  # fmt: skip
_LINES = [b"\r\n", b"\n", b"\r", b" ", b"\x00", b"\xff\xfe", b"\x1b[2J", b"x" * 300]
_IMAP = [b"* OK", b"* PREAUTH", b"* BYE", b"* ", b"a1 OK", b"a1 NO", b"a1 BAD", b"a1"]
_POP3 = [b"+OK", b"-ERR", b"+OK ready", b"+"]
_SIEVE = [b"OK", b"NO", b"BYE", b'"IMPLEMENTATION" "x"', b'"STARTTLS"', b"ok", b"OKAY"]
_XML = [b"<", b">", b"/>", b"<?xml version='1.0'?>", b"<stream:stream>", b"<stream:features>",
        b"</stream:features>", b"<features/>", b"<features", b"</features >",
        b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>", b"<proceed/>", b"<proceed",
        b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>", b"</stream:stream>", b"</error>",
        b"<host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>", b"<text>", b"</text>",
        b"<a>", b"'", b'"']  # fmt: skip
_LDAP = [b"\x30", b"\x0c", b"\x81", b"\x84\xff\xff\xff\xff", b"\x80", b"\x00", b"\x02\x01\x01",
         b"\x78", b"\x0a\x01\x00", b"\x0a\x01\x34", b"\x04\x00", b"\x04\x05hello",
         b"\x30\x0c\x02\x01\x01\x78\x07\x0a\x01\x00\x04\x00\x04\x00"]  # fmt: skip
_POSTGRES = [b"S", b"N", b"E", struct.pack("!I", 4), struct.pack("!I", 0xFFFFFFFF),
             struct.pack("!I", 20), b"SFATAL\x00Mno ssl\x00\x00", b"M", b"\x00"]  # fmt: skip
_MYSQL_GREETING = (
    b"\x0a5.5.5-10.11.6-MariaDB\x00\x01\x00\x00\x00abcdefgh\x00\xff\xff"
    + b"\x2d\x02\x00\xff\x81\x15" + b"\x00" * 10 + b"ijklmnopqrst\x00"
)  # fmt: skip
_MYSQL = [len(_MYSQL_GREETING).to_bytes(3, "little") + b"\x00" + _MYSQL_GREETING,
          b"\x05\x00\x00\x00", b"\xff\xff\xff\x00", b"\x01\x00\x00\x00", b"\x0a", b"\xff",
          b"\xff\x69\x04#28000denied", b"\x00\x00\x00"]  # fmt: skip
_RDP = [b"\x03\x00\x00\x13", b"\x03\x00\x00\x0b", b"\x03\x00\xff\xff", b"\x0e\xd0\x00\x00",
        b"\x12\x34\x00", b"\x02\x00\x08\x00\x01\x00\x00\x00", b"\x03\x00\x08\x00\x05\x00\x00\x00",
        b"\x02\x00\x08\x00\x00\x00\x00\x00", b"\xe0", b"\xd0"]  # fmt: skip
_TDS = [tds_packets(0x04, prelogin_options([(0x00, bytes(6)), (0x01, b"\x01")])),
        tds_packets(0x04, prelogin_options([(0x01, b"\x02")])), b"\x04\x01", b"\x04\x00",
        b"\x12\x01", b"\x00\x08", b"\xff\xff", b"\x00\x00\x00\x00", b"\x01\xff\xff\x00\x00",
        b"\x16\x03\x03\x00\x05hello"]  # fmt: skip

TOKENS: dict[Protocol, list[bytes]] = {
    Protocol.SMTP: _CODED + _LINES,
    Protocol.LMTP: _CODED + _LINES,
    Protocol.FTP: _CODED + _LINES,
    Protocol.NNTP: _CODED + _LINES,
    Protocol.IMAP: _IMAP + _LINES,
    Protocol.POP3: _POP3 + _LINES,
    Protocol.SIEVE: _SIEVE + _LINES,
    Protocol.XMPP: _XML + _LINES,
    Protocol.XMPP_SERVER: _XML + _LINES,
    Protocol.LDAP: _LDAP,
    Protocol.POSTGRES: _POSTGRES,
    Protocol.MYSQL: _MYSQL,
    Protocol.RDP: _RDP,
    Protocol.MSSQL: _TDS,
}


@st.composite
def hostile_chunks(draw: st.DrawFn, tokens: list[bytes]) -> list[bytes]:
    """Protocol words and noise, sometimes with a flood of one word, cut at random points."""
    pieces = st.one_of(st.sampled_from(tokens), st.binary(max_size=24))
    data = b"".join(draw(st.lists(pieces, max_size=30)))
    if draw(st.integers(0, 3)) == 0:
        data += draw(st.sampled_from(tokens)) * draw(st.integers(1, 20_000))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


@contextlib.contextmanager
def _serving(chunks: list[bytes]) -> Iterator[socket.socket]:
    """A loopback connection whose server side sends ``chunks`` one read apart, then ends
    its side and drains what the client says until it leaves."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=5)
        server, _ = listener.accept()

    def feed() -> None:
        with server, contextlib.suppress(OSError):
            server.settimeout(5)
            for chunk in chunks:
                server.sendall(chunk)
                time.sleep(0.0005)  # lets the client read: chunks arrive as separate reads
            server.shutdown(socket.SHUT_WR)
            while server.recv(65536):
                pass

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    try:
        yield client
    finally:
        client.close()
        thread.join(5)


def run_dialogue(protocol: Protocol, chunks: list[bytes]) -> None:
    """Negotiate ``protocol`` against ``chunks``; assert only handled errors, in time."""
    started = time.monotonic()
    with _serving(chunks) as sock:
        conn = Conn(sock, Deadline(DEADLINE))
        try:
            io = starttls.negotiate(DIALOGUES[protocol], conn, "localhost")
            for _ in range(4):  # the TLS record reader after the dialogue (TDS for mssql)
                if not io.recv():
                    break
        except HANDLED:
            pass
    assert time.monotonic() - started < DEADLINE + 0.5


@pytest.mark.parametrize("protocol", sorted(TOKENS))
def test_every_dialogue_survives_hostile_streams(protocol: Protocol) -> None:
    """Each STARTTLS reply parser, fed chunked hostile bytes, ends in time with a handled
    error or a RecordIO."""

    @BOUNDED
    @given(chunks=hostile_chunks(TOKENS[protocol]))
    def check(chunks: list[bytes]) -> None:
        run_dialogue(protocol, chunks)

    check()


def test_every_protocol_is_fuzzed() -> None:
    """No dialogue in the registry is left out of the fuzzing."""
    assert set(TOKENS) == set(Protocol)


# --- the TLS record reader -----------------------------------------------------------------

_FLIGHT = [hostile.server_hello(0x009C), hostile.server_hello(0x1301, 0x0304),
           hostile.certificate_message((b"\x30\x03\x02\x01\x01", b"\x30\x00")),
           hostile.SERVER_HELLO_DONE, b"\x0b\x00\x00\x03", b"\x02\x00\x00\x26", b"\x00" * 4,
           b"\xff\xff\xff"]  # fmt: skip


@st.composite
def flights(draw: st.DrawFn) -> bytes:
    """Handshake messages and noise, cut into records of a random size, with stray bytes."""
    pieces = st.one_of(st.sampled_from(_FLIGHT), st.binary(max_size=16))
    stream = b"".join(draw(st.lists(pieces, max_size=12)))
    data = hostile.records(0x16, stream, draw(st.integers(1, 400))) if stream else b""
    return data + draw(st.binary(max_size=16))


@settings(max_examples=300, deadline=1000)
@given(data=st.one_of(flights(), st.binary(max_size=300)))
def test_record_reader_never_raises(data: bytes) -> None:
    """Any bytes give a ServerFlight; a chain holds only whole entries that open a DER
    SEQUENCE."""
    flight = tls_records.read_server_flight(data)
    assert all(der.startswith(b"\x30") for der in flight.chain)
    assert sum(map(len, flight.chain)) <= len(data)
    assert flight.version is None or flight.version.startswith(("SSL", "TLS", "0x"))


@settings(max_examples=100, deadline=1000)
@given(ders=st.lists(st.binary(max_size=300).map(b"\x30".__add__), min_size=1, max_size=4),
       size=st.integers(1, 500))  # fmt: skip
def test_record_reader_reassembles_any_fragmentation(ders: list[bytes], size: int) -> None:
    """The Certificate message is read whole however records cut it, with several
    messages in one record, and the TLS 1.2 version comes from the ServerHello."""
    stream = (
        hostile.server_hello(0x009C)
        + hostile.certificate_message(tuple(ders))
        + hostile.SERVER_HELLO_DONE
    )
    flight = tls_records.read_server_flight(hostile.records(0x16, stream, size))
    assert flight == tls_records.ServerFlight("TLSv1.2", tuple(ders))


def test_record_reader_stops_at_change_cipher_spec_and_tls13() -> None:
    """Nothing after a non-handshake record is read, and a TLS 1.3 ServerHello (whose
    Certificate is encrypted) never yields a chain."""
    certificate = hostile.certificate_message((b"\x30\x00",))
    after_ccs = hostile.records(0x16, hostile.server_hello(0x009C)) + b"\x14\x03\x03\x00\x01\x01"
    flight = tls_records.read_server_flight(after_ccs + hostile.records(0x16, certificate))
    assert flight == tls_records.ServerFlight("TLSv1.2", ())
    noise = hostile.records(0x16, hostile.certificate_message((b"\x30\x00", b"not DER")))
    assert tls_records.read_server_flight(noise).chain == ()
    tls13 = hostile.records(0x16, hostile.server_hello(0x1301, 0x0304) + certificate)
    assert tls_records.read_server_flight(tls13) == tls_records.ServerFlight("TLSv1.3", ())
