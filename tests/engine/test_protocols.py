"""The STARTTLS protocol table: every protocol has its ports, schemes and dialogue; the
derived scheme and port tables; and their precedence."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any

import pytest

from trackssl_agent.engine import dialogues, protocols, starttls
from trackssl_agent.engine.dialogues import DIALOGUES
from trackssl_agent.engine.protocols import PORTS, SCHEMES, Protocol
from trackssl_agent.engine.targets import parse_target

# SPEC section 2, STARTTLS, written out again so that a slip in the table shows up here.
SPEC_PORTS = {
    21: "ftp", 24: "lmtp", 25: "smtp", 587: "smtp", 110: "pop3", 119: "nntp", 143: "imap",
    389: "ldap", 3306: "mysql", 3389: "rdp", 4190: "sieve", 5222: "xmpp",
    5269: "xmpp-server", 5432: "postgres", 1433: "mssql",
}  # fmt: skip


def test_port_table_is_the_spec() -> None:
    """The well-known port table holds exactly the ports and protocols of SPEC section 2."""
    assert {port: protocol.value for port, protocol in PORTS.items()} == SPEC_PORTS


@pytest.mark.parametrize(("port", "name"), sorted(SPEC_PORTS.items()))
def test_well_known_port_selects_dialogue(port: int, name: str) -> None:
    """With --starttls auto and no scheme, each well-known port picks its dialogue."""
    assert parse_target(f"db.corp.example:{port}").starttls is Protocol(name)
    assert parse_target(f"10.1.2.3:{port}", starttls="auto").starttls is Protocol(name)


@pytest.mark.parametrize("port", [443, 636, 993, 995, 465, 8443, 2222, 50000])
def test_other_ports_are_direct_tls(port: int) -> None:
    """Every port outside the table is direct TLS."""
    assert parse_target(f"host.example:{port}").starttls is None


@pytest.mark.parametrize("port", sorted(SPEC_PORTS))
def test_starttls_none_overrides_port(port: int) -> None:
    """``--starttls none`` makes even a well-known port direct TLS."""
    assert parse_target(f"host.example:{port}", starttls="none").starttls is None


def test_starttls_option_overrides_port() -> None:
    """``--starttls NAME`` beats the port table."""
    assert parse_target("host.example:389", starttls="postgres").starttls is Protocol.POSTGRES


def test_scheme_beats_option_and_port() -> None:
    """A scheme decides, whatever the port and the option say."""
    assert parse_target("imap://host.example:389", starttls="smtp").starttls is Protocol.IMAP
    assert parse_target("https://host.example:5432").starttls is None


@pytest.mark.parametrize(
    ("scheme", "protocol", "port"),
    [(scheme, protocol, port) for scheme, (protocol, port) in sorted(SCHEMES.items()) if port],
)
def test_scheme_default_ports(scheme: str, protocol: Protocol | None, port: int) -> None:
    """A scheme without a port uses its default port and its dialogue (or direct TLS)."""
    target = parse_target(f"{scheme}://host.example")
    assert (target.starttls, target.port) == (protocol, port)


@pytest.mark.parametrize("protocol", list(Protocol))
def test_every_protocol_has_port_scheme_and_dialogue(protocol: Protocol) -> None:
    """Each protocol carries a well-known port, a scheme with a default port, and a dialogue."""
    assert protocol.ports
    assert all(PORTS[port] is protocol for port in protocol.ports)
    assert protocol.schemes
    assert all(SCHEMES[scheme] == (protocol, port) for scheme, port in protocol.schemes.items())
    assert callable(DIALOGUES[protocol])
    assert protocol.value in protocols.STARTTLS_CHOICES


@pytest.mark.parametrize(
    "row", [(), ((),), ((), {"broken": 1}), ((1,), "not schemes"), ((1,), {}, 5)]
)
def test_a_protocol_row_without_its_pieces_cannot_be_declared(row: tuple[Any, ...]) -> None:
    """Declaring a protocol without ports (or with schemes that are no table) fails when the
    table is built."""
    # Enum keeps the __new__ that built the members here (3.11+; not in typeshed).
    new_member: Callable[..., Any] = Protocol._new_member_  # type: ignore[attr-defined]

    with pytest.raises(TypeError, match=r"protocol broken: expected \(ports\[, schemes\]\)"):

        class Broken(StrEnum):
            __new__ = new_member
            BROKEN = ("broken", *row)


@pytest.mark.parametrize("dropped", [Protocol.SMTP, Protocol.MSSQL])
def test_a_protocol_without_a_dialogue_cannot_be_imported(dropped: Protocol) -> None:
    """The dialogue table refuses to be built while a protocol of the table has no dialogue
    (or something that cannot run as one)."""
    without = {p: d for p, d in DIALOGUES.items() if p is not dropped}
    with pytest.raises(TypeError, match=f"no dialogue for protocol {dropped.value}$"):
        dialogues.complete(without)
    with pytest.raises(TypeError, match=f"no dialogue for protocol {dropped.value}$"):
        dialogues.complete({**without, dropped: "not a dialogue"})  # type: ignore[dict-item]
    assert dialogues.complete({**without, dropped: starttls.imap})[dropped] is starttls.imap


def test_choices_are_auto_none_and_every_protocol() -> None:
    """``--starttls`` offers auto, none and each protocol of the table."""
    assert set(protocols.STARTTLS_CHOICES) == {"auto", "none", *(p.value for p in Protocol)}
