"""TARGET parsing (SPEC section 2) and the STARTTLS selection rules."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trackssl_agent import protocols
from trackssl_agent.errors import UsageError
from trackssl_agent.protocols import Protocol
from trackssl_agent.targets import parse_target, read_targets_file


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
