"""Pre-TLS dialogues of the binary protocols: LDAP, PostgreSQL, MySQL, RDP and SQL Server.

Each follows the byte layout of its specification (cited per function) and raises
DialogueError with the server's own words (result codes, error messages, failure codes).
"""

from __future__ import annotations

import struct

from trackssl_agent.engine.transport import Conn, DialogueError, RecordIO, printable

# --- LDAP (RFC 4511 4.14, 4.12) --------------------------------------------------------

_STARTTLS_OID = b"1.3.6.1.4.1.1466.20037"
# LDAPMessage { messageID 1, extendedReq [APPLICATION 23] { requestName [0] OID } }
LDAP_STARTTLS_REQUEST = (
    bytes([0x30, 5 + 2 + len(_STARTTLS_OID), 0x02, 0x01, 0x01])
    + bytes([0x77, 2 + len(_STARTTLS_OID), 0x80, len(_STARTTLS_OID)])
    + _STARTTLS_OID
)
_LDAP_RESULTS = {
    1: "operationsError",
    2: "protocolError",
    7: "authMethodNotSupported",
    8: "strongerAuthRequired",
    11: "adminLimitExceeded",
    12: "unavailableCriticalExtension",
    13: "confidentialityRequired",
    50: "insufficientAccessRights",
    51: "busy",
    52: "unavailable",
    53: "unwillingToPerform",
    80: "other",
}
_MAX_BER = 64 * 1024


def _ber_length(data: bytes, at: int) -> tuple[int, int]:
    """Return (length, offset of the contents) for the length octets at ``at``."""
    first = data[at]
    if first < 0x80:
        return first, at + 1
    count = first & 0x7F
    if not 1 <= count <= 4 or at + 1 + count > len(data):
        raise DialogueError("the server sent a malformed LDAP length")
    return int.from_bytes(data[at + 1 : at + 1 + count], "big"), at + 1 + count


def _ber_elements(data: bytes) -> list[tuple[int, bytes]]:
    """Split concatenated BER TLVs into (tag, contents)."""
    elements = []
    at = 0
    while at < len(data):
        if at + 2 > len(data):
            raise DialogueError("the server sent a truncated LDAP message")
        tag = data[at]
        length, start = _ber_length(data, at + 1)
        if start + length > len(data):
            raise DialogueError("the server sent a truncated LDAP message")
        elements.append((tag, data[start : start + length]))
        at = start + length
    return elements


def _read_ber(conn: Conn) -> bytes:
    """Read one whole BER element (an LDAPMessage) from the connection."""
    head = conn.read_exact(2)
    if head[0] != 0x30:
        raise DialogueError(f"the server's reply is not LDAP: {printable(head + conn.pending())!r}")
    if head[1] < 0x80:
        return head + conn.read_exact(head[1])
    count = head[1] & 0x7F
    if not 1 <= count <= 4:
        raise DialogueError("the server sent a malformed LDAP length")
    length_octets = conn.read_exact(count)
    length = int.from_bytes(length_octets, "big")
    if length > _MAX_BER:
        raise DialogueError(f"the server's LDAP reply is implausibly long ({length} bytes)")
    return head + length_octets + conn.read_exact(length)


def ldap(conn: Conn, host: str) -> RecordIO:
    """RFC 4511 4.14: the StartTLS ExtendedRequest; resultCode 0 means TLS starts now."""
    conn.send(LDAP_STARTTLS_REQUEST)
    [(_, message)] = _ber_elements(_read_ber(conn))
    parts = _ber_elements(message)
    if len(parts) < 2 or parts[1][0] != 0x78:  # [APPLICATION 24] ExtendedResponse
        raise DialogueError("the server answered StartTLS with something other than a response")
    fields = _ber_elements(parts[1][1])
    if len(fields) < 3 or fields[0][0] != 0x0A:
        raise DialogueError("the server sent a malformed LDAP ExtendedResponse")
    code = int.from_bytes(fields[0][1], "big")
    if code != 0:
        name = _LDAP_RESULTS.get(code, "resultCode")
        words = printable(fields[2][1])
        raise DialogueError(
            f"the server refused StartTLS: {name} ({code})" + (f": {words}" if words else "")
        )
    return conn


# --- PostgreSQL (protocol 3, 53.2.10 SSL Session Encryption) ----------------------------

POSTGRES_SSL_REQUEST = struct.pack("!II", 8, 80877103)


def _postgres_error(conn: Conn) -> str:
    """The M (message) field of an ErrorResponse whose 'E' byte was already read."""
    (length,) = struct.unpack("!I", conn.read_exact(4))
    if not 4 <= length <= _MAX_BER:
        return "an error"
    fields = conn.read_exact(length - 4).split(b"\0")
    for field in fields:
        if field.startswith(b"M"):
            return printable(field[1:])
    return printable(b" ".join(fields))


def postgres(conn: Conn, host: str) -> RecordIO:
    """SSLRequest, then one byte: ``S`` starts TLS, ``N`` refuses it."""
    conn.send(POSTGRES_SSL_REQUEST)
    answer = conn.read_exact(1)
    if answer == b"S":
        return conn  # bytes queued behind the S are rejected by negotiate() (CVE-2021-23222)
    if answer == b"N":
        raise DialogueError("the server refused SSL: it answered 'N' (ssl is off)")
    if answer == b"E":
        raise DialogueError(f"the server refused SSL: {_postgres_error(conn)}")
    raise DialogueError(f"the server's reply is not PostgreSQL: {printable(answer)!r}")


# --- MySQL / MariaDB (Protocol::Handshake v10, Protocol::SSLRequest) ---------------------

_CLIENT_LONG_PASSWORD = 0x1
_CLIENT_PROTOCOL_41 = 0x200
_CLIENT_SSL = 0x800
_CLIENT_SECURE_CONNECTION = 0x8000
_MYSQL_CHARSET_UTF8MB4 = 45
_MAX_PACKET = 16 * 1024 * 1024


def _mysql_error(payload: bytes) -> str:
    """ERR_Packet: 0xff, error code, optional ``#`` + SQLSTATE, message."""
    code = int.from_bytes(payload[1:3], "little") if len(payload) >= 3 else 0
    message = payload[3:]
    if message.startswith(b"#"):
        message = message[6:]
    return f"error {code}: {printable(message)}"


def mysql(conn: Conn, host: str) -> RecordIO:
    """Read the server's Handshake v10; if it has CLIENT_SSL, send SSLRequest; TLS follows."""
    header = conn.read_exact(4)
    length = int.from_bytes(header[:3], "little")
    if not 1 <= length <= _MAX_BER:
        raise DialogueError(f"the server's greeting is not MySQL: {printable(header)!r}")
    payload = conn.read_exact(length)
    if payload[0] == 0xFF:
        raise DialogueError(f"the server refused the connection: {_mysql_error(payload)}")
    if payload[0] != 10:
        raise DialogueError(
            f"the server speaks MySQL protocol {payload[0]}, which has no TLS "
            f"({printable(payload[1:40])!r})"
        )
    version, _, rest = payload[1:].partition(b"\0")
    # connection id (4), auth data part 1 (8), filler (1), then the lower capability flags.
    if len(rest) < 15:
        raise DialogueError("the server sent a truncated MySQL greeting")
    capabilities = int.from_bytes(rest[13:15], "little")
    if not capabilities & _CLIENT_SSL:
        raise DialogueError(
            f"the server ({printable(version)}) does not offer TLS: "
            "its greeting lacks the CLIENT_SSL capability"
        )
    flags = _CLIENT_LONG_PASSWORD | _CLIENT_PROTOCOL_41 | _CLIENT_SSL | _CLIENT_SECURE_CONNECTION
    request = struct.pack("<IIB23x", flags, _MAX_PACKET, _MYSQL_CHARSET_UTF8MB4)
    sequence = (header[3] + 1) & 0xFF
    conn.send(len(request).to_bytes(3, "little") + bytes([sequence]) + request)
    return conn


# --- RDP (MS-RDPBCGR 2.2.1.1 X.224 Connection Request, 2.2.1.2 Connection Confirm) ------

_PROTOCOL_SSL = 0x1
_PROTOCOL_HYBRID = 0x2
_RDP_NEG_REQ = 0x01
_RDP_NEG_RSP = 0x02
_RDP_NEG_FAILURE = 0x03
_X224_CR = 0xE0
_X224_CC = 0xD0
_RDP_FAILURES = {
    1: "SSL_REQUIRED_BY_SERVER",
    2: "SSL_NOT_ALLOWED_BY_SERVER",
    3: "SSL_CERT_NOT_ON_SERVER",
    4: "INCONSISTENT_FLAGS",
    5: "HYBRID_REQUIRED_BY_SERVER",
    6: "SSL_WITH_USER_AUTH_REQUIRED_BY_SERVER",
}


def rdp_connection_request() -> bytes:
    """TPKT + X.224 CR TPDU + RDP_NEG_REQ asking for TLS or CredSSP (which starts with TLS)."""
    negotiation = struct.pack("<BBHI", _RDP_NEG_REQ, 0, 8, _PROTOCOL_SSL | _PROTOCOL_HYBRID)
    x224 = bytes([6 + len(negotiation), _X224_CR, 0, 0, 0, 0, 0]) + negotiation
    return struct.pack("!BBH", 3, 0, 4 + len(x224)) + x224


def rdp(conn: Conn, host: str) -> RecordIO:
    """Send the Connection Request; an RDP_NEG_RSP means TLS starts on the stream at once."""
    conn.send(rdp_connection_request())
    version, _, length = struct.unpack("!BBH", conn.read_exact(4))
    if version != 3 or not 11 <= length <= 4096:
        raise DialogueError("the server's reply is not an RDP (TPKT) packet")
    tpdu = conn.read_exact(length - 4)
    if tpdu[1] & 0xF0 != _X224_CC:
        raise DialogueError(f"the server did not confirm the connection (X.224 0x{tpdu[1]:02x})")
    if len(tpdu) < 15:
        raise DialogueError("the server offers only standard RDP security, not TLS")
    kind, _flags, _size, value = struct.unpack("<BBHI", tpdu[7:15])
    if kind == _RDP_NEG_FAILURE:
        name = _RDP_FAILURES.get(value, "unknown failure code")
        raise DialogueError(f"the server refused TLS: RDP_NEG_FAILURE {name} ({value})")
    if kind != _RDP_NEG_RSP:
        raise DialogueError(f"the server sent an unknown RDP negotiation type {kind}")
    if not value & (_PROTOCOL_SSL | _PROTOCOL_HYBRID | 0x8):  # 0x8: HYBRID_EX, also TLS first
        raise DialogueError("the server selected standard RDP security, not TLS")
    return conn


# --- SQL Server (MS-TDS 2.2.6.5 PRELOGIN) ------------------------------------------------

TDS_PRELOGIN = 0x12
_TDS_RESPONSE = 0x04
_TDS_EOM = 0x01
_TDS_HEADER = struct.Struct("!BBHHBB")  # type, status, length, SPID, PacketID, Window
_TDS_PACKET_SIZE = 4096  # the size every server accepts before LOGIN7 negotiates another
_PL_VERSION = 0x00
_PL_ENCRYPTION = 0x01
_PL_TERMINATOR = 0xFF
_ENCRYPT_ON = 0x01
_ENCRYPT_NOT_SUP = 0x02
_ENCRYPTION_NAMES = {0: "ENCRYPT_OFF", 1: "ENCRYPT_ON", 2: "ENCRYPT_NOT_SUP", 3: "ENCRYPT_REQ"}


def tds_packets(kind: int, payload: bytes, packet_id: int = 1) -> bytes:
    """Split ``payload`` into TDS packets of ``kind``; the last has the EOM status."""
    size = _TDS_PACKET_SIZE - _TDS_HEADER.size
    chunks = [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]
    out = b""
    for index, chunk in enumerate(chunks):
        status = _TDS_EOM if index == len(chunks) - 1 else 0
        length = _TDS_HEADER.size + len(chunk)
        out += _TDS_HEADER.pack(kind, status, length, 0, (packet_id + index) & 0xFF, 0) + chunk
    return out


def prelogin_options(options: list[tuple[int, bytes]]) -> bytes:
    """PRELOGIN payload: option tokens (type, offset, length), 0xFF, then the option data."""
    table_size = 5 * len(options) + 1
    table, data = b"", b""
    for token, value in options:
        table += struct.pack("!BHH", token, table_size + len(data), len(value))
        data += value
    return table + bytes([_PL_TERMINATOR]) + data


def parse_prelogin(payload: bytes) -> dict[int, bytes]:
    """Option token -> data of a PRELOGIN payload."""
    options: dict[int, bytes] = {}
    at = 0
    while at < len(payload) and payload[at] != _PL_TERMINATOR:
        if at + 5 > len(payload):
            raise DialogueError("the server sent a truncated PRELOGIN response")
        token, offset, length = struct.unpack("!BHH", payload[at : at + 5])
        options[token] = payload[offset : offset + length]
        at += 5
    return options


def _read_tds_message(conn: Conn) -> tuple[int, bytes]:
    """Read TDS packets up to the one with EOM; return (type, joined payload)."""
    payload = b""
    while True:
        kind, status, length, _, _, _ = _TDS_HEADER.unpack(conn.read_exact(_TDS_HEADER.size))
        if length < _TDS_HEADER.size or len(payload) > _MAX_BER:
            raise DialogueError(f"the server's reply is not TDS (type 0x{kind:02x})")
        payload += conn.read_exact(length - _TDS_HEADER.size)
        if status & _TDS_EOM:
            return kind, payload


class TdsRecordIO:
    """TLS records inside TDS PRELOGIN packets, as SQL Server wants them during the handshake."""

    def __init__(self, conn: Conn) -> None:
        self._conn = conn
        self._buffer = bytearray()
        self._packet_id = 1

    def send(self, data: bytes) -> None:
        """Wrap ``data`` in PRELOGIN packets and send them."""
        self._conn.send(tds_packets(TDS_PRELOGIN, data, self._packet_id))
        self._packet_id = (self._packet_id + 1) & 0xFF

    def _take(self, size: int) -> bytes | None:
        """``size`` bytes from the stream; None at a clean end of stream."""
        while len(self._buffer) < size:
            data = self._conn.recv()
            if not data:
                if self._buffer:
                    raise ConnectionResetError("the server closed the connection mid-packet")
                return None
            self._buffer += data
        out = bytes(self._buffer[:size])
        del self._buffer[:size]
        return out

    def recv(self) -> bytes:
        """The payload of the next TDS packet (TLS record bytes), or b"" when the server closed."""
        header = self._take(_TDS_HEADER.size)
        if header is None:
            return b""
        kind, _, length, _, _, _ = _TDS_HEADER.unpack(header)
        if kind not in (TDS_PRELOGIN, _TDS_RESPONSE) or length < _TDS_HEADER.size:
            # Hand the raw bytes on: the handshake then fails as "not TLS" with them quoted.
            return header
        return self._take(length - _TDS_HEADER.size) or b""


def mssql(conn: Conn, host: str) -> RecordIO:
    """PRELOGIN with ENCRYPTION=ON; unless the server answers ENCRYPT_NOT_SUP, TLS follows in
    PRELOGIN packets (even ENCRYPT_OFF means the login is encrypted, so a handshake comes)."""
    # VERSION must come first (MS-TDS 2.2.6.5); it is the client's version, 0.0.0.0 here.
    payload = prelogin_options([(_PL_VERSION, bytes(6)), (_PL_ENCRYPTION, bytes([_ENCRYPT_ON]))])
    conn.send(tds_packets(TDS_PRELOGIN, payload))
    kind, response = _read_tds_message(conn)
    if kind != _TDS_RESPONSE:
        raise DialogueError(f"the server's reply is not a PRELOGIN response (type 0x{kind:02x})")
    encryption = parse_prelogin(response).get(_PL_ENCRYPTION)
    if not encryption:
        raise DialogueError("the server's PRELOGIN response has no ENCRYPTION option")
    if encryption[0] == _ENCRYPT_NOT_SUP:
        raise DialogueError("the server does not support encryption: ENCRYPT_NOT_SUP")
    if encryption[0] not in _ENCRYPTION_NAMES:
        raise DialogueError(f"the server sent an unknown ENCRYPTION value {encryption[0]}")
    return TdsRecordIO(conn)
