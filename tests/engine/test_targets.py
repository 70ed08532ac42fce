"""TARGET parsing (SPEC section 2), the STARTTLS selection rules, and targets files read
within their bounds (also through real ``check-once --targets`` processes)."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.child_process import child_env, run_agent
from trackssl_agent.engine import protocols, targets
from trackssl_agent.engine.protocols import Protocol
from trackssl_agent.engine.targets import (
    MAX_FILE_BYTES,
    MAX_LINE_BYTES,
    MAX_TARGETS,
    parse_target,
    read_targets_file,
    read_targets_stream,
)
from trackssl_agent.errors import UsageError


@pytest.mark.parametrize(
    ("text", "host", "port", "starttls", "is_ip"),
    [
        ("intranet.corp.example", "intranet.corp.example", 443, None, False),
        ("intranet:8443", "intranet", 8443, None, False),
        ("10.1.2.3:636", "10.1.2.3", 636, None, True),
        ("[2001:db8::1]:993", "2001:db8::1", 993, None, True),
        ("::1", "::1", 443, None, True),
        ("[::1]", "::1", 443, None, True),
        ("https://web.corp", "web.corp", 443, None, False),
        ("ldaps://dc1", "dc1", 636, None, False),
        ("imaps://mail", "mail", 993, None, False),
        ("pop3s://mail", "mail", 995, None, False),
        ("smtps://mail", "mail", 465, None, False),
        ("tls://db:6000", "db", 6000, None, False),
        ("smtp://mx", "mx", 25, Protocol.SMTP, False),
        ("submission://mx", "mx", 587, Protocol.SMTP, False),
        ("lmtp://mx", "mx", 24, Protocol.LMTP, False),
        ("imap://mail", "mail", 143, Protocol.IMAP, False),
        ("pop3://mail", "mail", 110, Protocol.POP3, False),
        ("ftp://files", "files", 21, Protocol.FTP, False),
        ("ldap://dc1", "dc1", 389, Protocol.LDAP, False),
        ("xmpp://chat", "chat", 5222, Protocol.XMPP, False),
        ("xmpp-server://chat", "chat", 5269, Protocol.XMPP_SERVER, False),
        ("nntp://news", "news", 119, Protocol.NNTP, False),
        ("sieve://mail", "mail", 4190, Protocol.SIEVE, False),
        ("postgres://db", "db", 5432, Protocol.POSTGRES, False),
        ("mysql://db", "db", 3306, Protocol.MYSQL, False),
        ("rdp://desk", "desk", 3389, Protocol.RDP, False),
        ("mssql://sql", "sql", 1433, Protocol.MSSQL, False),
        ("ldap://dc1:3389", "dc1", 3389, Protocol.LDAP, False),
        ("HTTPS://Web.Corp/", "Web.Corp", 443, None, False),
        ("host_with_underscore.corp:443", "host_with_underscore.corp", 443, None, False),
    ],
)
def test_valid_targets(
    text: str, host: str, port: int, starttls: Protocol | None, is_ip: bool
) -> None:
    """Every form of SPEC section 2 parses to the right host, port and dialogue."""
    target = parse_target(text)
    assert (target.host, target.port, target.starttls, target.is_ip) == (
        host,
        port,
        starttls,
        is_ip,
    )
    assert target.text == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "host:0",
        "host:65536",
        "host:-1",
        "host:abc",
        "host:",
        ":443",
        "a b",
        "host\t:443",
        "host\x00",
        "gopher://host",
        "tls://host",
        "[::1",
        "[::1]x",
        "[nothex]:443",
        "https://",
        "https://host/path",
        "x..y",
        "-bad-.example",
    ],
)
def test_invalid_targets_are_usage_errors_quoting_the_text(text: str) -> None:
    """Invalid targets raise a usage error (exit 3) that names the offending text."""
    with pytest.raises(UsageError) as info:
        parse_target(text)
    assert info.value.exit_code == 3
    assert repr(text) in str(info.value) or text == ""


@pytest.mark.parametrize(("port", "protocol"), sorted(protocols.PORTS.items()))
def test_well_known_port_selects_dialogue(port: int, protocol: Protocol) -> None:
    """Every entry of the port table picks its dialogue under --starttls auto."""
    assert parse_target(f"host:{port}").starttls == protocol


def test_selection_precedence() -> None:
    """Scheme beats --starttls, which beats the port table; none forces direct TLS."""
    assert parse_target("https://host:389", starttls="smtp").starttls is None
    assert parse_target("host:389", starttls="smtp").starttls == Protocol.SMTP
    assert parse_target("host:389", starttls="none").starttls is None
    assert parse_target("host:8443").starttls is None


def test_sni_name_is_idna_and_without_trailing_dot() -> None:
    """Non-ASCII names go out as UTS 46 A-labels; a trailing dot is stripped; IPs send none."""
    assert parse_target("bücher.example.").sni_name == "xn--bcher-kva.example"
    assert parse_target("Host.Example.").sni_name == "host.example"
    assert parse_target("127.0.0.1").sni_name is None


def test_targets_file_skips_comments_and_names_bad_line() -> None:
    """A targets file ignores blanks and comments and names the line of a bad entry."""
    lines = ["# header", "", "a.example  # inline", "ldap://dc1", "bad host"]
    with pytest.raises(UsageError, match=r"targets.txt, line 5"):
        read_targets_file(lines, source="targets.txt", starttls="auto")
    good = read_targets_file(lines[:4], source="t", starttls="auto")
    assert [t.host for t in good] == ["a.example", "dc1"]


_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
_hostname = st.lists(_label, min_size=1, max_size=4).map(".".join)


@given(host=_hostname, port=st.integers(min_value=1, max_value=65535))
def test_hostname_and_port_roundtrip(host: str, port: int) -> None:
    """Any valid name:port parses back to the same name and port."""
    target = parse_target(f"{host}:{port}")
    assert (target.host, target.port) == (host, port)
    assert target.endpoint == f"{host}:{port}"


@given(address=st.ip_addresses(v=6), port=st.integers(min_value=1, max_value=65535))
def test_bracketed_ipv6_roundtrip(address: object, port: int) -> None:
    """Any IPv6 literal in brackets parses with its port; bare, it takes port 443."""
    bracketed = parse_target(f"[{address}]:{port}")
    assert bracketed.is_ip
    assert bracketed.port == port
    assert parse_target(str(address)).port == 443


@given(port=st.one_of(st.integers(max_value=0), st.integers(min_value=65536)))
def test_out_of_range_ports_rejected(port: int) -> None:
    """Ports outside 1-65535 are always usage errors."""
    with pytest.raises(UsageError):
        parse_target(f"host:{port}")


@given(text=st.text(max_size=40))
def test_parser_never_crashes(text: str) -> None:
    """Arbitrary text either parses or raises UsageError: never anything else."""
    try:
        target = parse_target(text)
    except UsageError:
        return
    assert 1 <= target.port <= 65535
    assert target.host


_pieces = st.sampled_from(
    ["https://", "smtp://", "ldap://", "xmpp-server://", "[", "]", ":", "::", "::1", "127.0.0.1",
     "0", "65535", "65536", "99999999999999999999", ".", "-", "_", "a", "é", "ß", "\u200d",
     "\u0085", "\u2028", "\x1b", "\x9b", "\u202e", "\u00ad", "%", "/", "?", "@", "#", "xn--",
     "xn--zz", "\u0661", "\uff0e", "\u3002", "a" * 64, "fe80::1%eth0", "\ufeff", "\x00", "*"]
)  # fmt: skip
_hostile_text = st.one_of(st.text(max_size=60), st.lists(_pieces, max_size=25).map("".join))


@settings(max_examples=400, deadline=1000)
@given(text=_hostile_text, option=st.sampled_from(["auto", "none", "smtp", "ldap", "mssql"]))
def test_hostile_text_parses_to_a_printable_target_or_one_line_error(
    text: str, option: str
) -> None:
    """Any text gives a Target whose text and host are printable (no control, format or
    invisible characters) and whose SNI name can be computed, or a one-line UsageError."""
    try:
        target = parse_target(text, starttls=option)
    except UsageError as exc:
        assert str(exc).isprintable()
        return
    assert 1 <= target.port <= 65535
    assert target.text.isprintable()
    assert target.host
    assert target.host.isprintable()
    assert target.sni_name is None or target.sni_name.isascii()


@pytest.mark.parametrize("text", ["0\ufeff", "intra\u00adnet.corp", "a\u200bb.corp:443"])
def test_invisible_characters_are_rejected(text: str) -> None:
    """Regression (first fuzzing finding): a target with an invisible character IDNA drops
    (BOM, soft hyphen, zero-width space) was accepted and contacted as another name."""
    with pytest.raises(UsageError, match="invisible characters"):
        parse_target(text)


# --- targets files: read a line at a time, within their bounds -------------------------


class _Endless(io.RawIOBase):
    """An endless stream of one byte (``/dev/zero`` or ``yes``), counting what was read."""

    def __init__(self, byte: bytes) -> None:
        self.byte = byte
        self.served = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        size = len(buffer)
        buffer[:size] = self.byte * size
        self.served += size
        return size


def _read(data: bytes) -> list[str]:
    return [t.text for t in read_targets_stream(io.BytesIO(data), source="t.txt", starttls="auto")]


def test_endless_line_is_refused_after_reading_one_line() -> None:
    """An endless line (``/dev/zero``) is refused naming the line limit, after reading
    hardly more than that line: the file is never read whole."""
    raw = _Endless(b"\0")
    with pytest.raises(UsageError, match=r"t\.txt: line 1 is longer than 4,096 bytes") as info:
        read_targets_stream(io.BufferedReader(raw), source="t.txt", starttls="auto")
    assert raw.served <= 64 * 1024
    assert len(str(info.value)) < 200


def test_line_limit_is_4096_bytes_without_the_newline() -> None:
    """A 4,096-byte line (CRLF or LF ended, or the last one) is read; 4,097 is refused."""
    line = b"ok.example #" + b"c" * (MAX_LINE_BYTES - 12)
    assert len(line) == MAX_LINE_BYTES
    assert _read(line + b"\r\n" + line + b"\n" + line) == ["ok.example"] * 3
    with pytest.raises(UsageError, match="line 2 is longer than 4,096 bytes"):
        _read(line + b"\n" + line + b"c\n")


def test_file_larger_than_16_mib_is_refused() -> None:
    """A file of exactly 16 MiB is read; one byte more is refused, naming the limit."""
    comment = b"#" + b"c" * 1022 + b"\n"
    body = comment * (MAX_FILE_BYTES // len(comment) - 1)
    head = b"ok.example\n"
    exact = head + b"#" * (MAX_FILE_BYTES - len(head) - len(body) - 1) + b"\n" + body
    assert len(exact) == MAX_FILE_BYTES
    assert _read(exact) == ["ok.example"]
    with pytest.raises(UsageError, match="larger than 16 MiB, the limit for a targets file"):
        _read(exact + b"\n")


def test_more_than_max_targets_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """MAX_TARGETS (100,000, as docs/targets-and-protocols.md says) targets are read; one
    more is refused naming its line and the limit (the boundary checked at a limit of 5)."""
    assert MAX_TARGETS == 100_000
    monkeypatch.setattr(targets, "MAX_TARGETS", 5)
    assert len(_read(b"# header\n" + b"a.example\n" * 5)) == 5
    with pytest.raises(UsageError, match=r"t\.txt, line 8: more than 5 targets, the limit"):
        _read(b"# header\n" + b"a.example\n" * 5 + b"\nb.example\n")


def test_lines_are_numbered_as_an_editor_shows_them() -> None:
    """CR, CRLF and LF each end a line; a BOM starts the file; the bad line's number."""
    assert _read(b"\xef\xbb\xbfa.example\r\nb.example\rc.example\n") == [
        "a.example", "b.example", "c.example",
    ]  # fmt: skip
    with pytest.raises(UsageError, match=r"t\.txt, line 3: invalid target 'bad host'"):
        _read(b"a.example\r\nb.example\rbad host\n")


def test_text_that_is_not_utf8_names_its_line() -> None:
    """Bytes that are not UTF-8 are a usage error naming the line, not a traceback."""
    with pytest.raises(UsageError, match=r"t\.txt: line 2 is not UTF-8"):
        _read(b"a.example\nb\xff.example\n")


def test_long_bad_line_is_quoted_cut_short() -> None:
    """A bad 3,599-character line is quoted by its first 80 characters and its length."""
    line = ("bad host " * 400).strip()
    with pytest.raises(UsageError) as info:
        _read(b"ok.example\n" + line.encode() + b"\n")
    message = str(info.value)
    assert len(message) < 300
    assert f"{line[:80]!r}... (3,599 characters)" in message
    assert "t.txt, line 2" in message


# --- the same through real check-once processes -----------------------------------------


def _check_once(env: Path, targets: Path | str) -> subprocess.CompletedProcess[str]:
    args = ["check-once", "--targets", str(targets), "--timeout", "2"]
    return run_agent(args, env=child_env(env / "state"), cwd=env / "work", timeout=60)


def test_dev_zero_as_targets_is_exit_3_in_one_line(env: Path) -> None:
    """``check-once --targets /dev/zero`` exits 3 with one short line naming the file and
    the line limit (was: internal error: MemoryError)."""
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero here")
    proc = _check_once(env, "/dev/zero")
    assert proc.returncode == 3
    assert len(proc.stderr) < 1000
    assert proc.stderr.count("\n") == 1
    assert "/dev/zero: line 1 is longer than 4,096 bytes" in proc.stderr


def test_50_mb_one_line_file_is_exit_3_in_one_line(env: Path) -> None:
    """A 50 MB file of one line exits 3 with a short error naming the limit, not the line."""
    big = env / "one-line.txt"
    with big.open("wb") as handle:
        for _ in range(50):
            handle.write(b"x" * 1_000_000)
    proc = _check_once(env, big)
    assert proc.returncode == 3
    assert len(proc.stderr) < 1000
    assert f"{big}: line 1 is longer than 4,096 bytes" in proc.stderr


def test_17_mib_file_is_exit_3_in_one_line(env: Path) -> None:
    """A file of short lines beyond 16 MiB exits 3 naming the file and the size limit."""
    big = env / "many.txt"
    big.write_bytes(b"#" * 1023 + b"\n" + (b"#" * 1023 + b"\n") * (17 * 1024))
    proc = _check_once(env, big)
    assert proc.returncode == 3
    assert len(proc.stderr) < 1000
    assert f"{big}: the file is larger than 16 MiB" in proc.stderr


def test_long_bad_line_through_check_once_is_quoted_short(env: Path) -> None:
    """A bad 4,000-character line exits 3 with a short error quoting its start."""
    targets = env / "targets.txt"
    targets.write_text("ok.example\n" + "bad!" * 1000 + "\n")
    proc = _check_once(env, targets)
    assert proc.returncode == 3
    assert len(proc.stderr) < 1000
    assert "targets.txt, line 2: invalid target 'bad!bad!" in proc.stderr
    assert "... (4,000 characters)" in proc.stderr
