"""The STARTTLS protocol table: each protocol with its well-known ports, the URL schemes that
pick it and its dialogue, in one row; the scheme and port tables are derived from it.

Adding a protocol is adding a member here (its dialogue in ``starttls`` or
``starttls_binary``) plus a test against a real server: a member cannot be declared
without a port, a scheme and a dialogue.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from trackssl_agent import starttls, starttls_binary
from trackssl_agent.starttls import Dialogue


class Protocol(StrEnum):
    """A plaintext dialogue that leads to TLS on the same connection.

    Each member is ``name, well-known ports (the first is its scheme's default), dialogue``,
    plus other schemes when the protocol has more than the one named like it.
    """

    _value_: str
    ports: tuple[int, ...]
    """Plaintext ports that select this dialogue under ``--starttls auto`` (SPEC section 2)."""
    schemes: Mapping[str, int]
    """URL schemes that select this dialogue, each with its default port."""
    dialogue: Dialogue

    def __new__(cls, value: str, *row: Any) -> Protocol:
        # ``*row`` rather than named parameters: mypy would then demand them of the lookup
        # ``Protocol("smtp")`` too, which Enum routes elsewhere. A member without ports or a
        # dialogue fails here, when the module is imported.
        if len(row) not in {2, 3} or not row[0] or not callable(row[1]):
            raise TypeError(f"protocol {value}: expected (ports, dialogue[, schemes])")
        member = str.__new__(cls, value)
        member._value_ = value
        member.ports = tuple(row[0])
        member.dialogue = row[1]
        member.schemes = MappingProxyType(dict(row[2] if len(row) == 3 else {value: row[0][0]}))
        return member

    SMTP = "smtp", (25, 587), starttls.smtp, {"smtp": 25, "submission": 587}
    LMTP = "lmtp", (24,), starttls.lmtp
    IMAP = "imap", (143,), starttls.imap
    POP3 = "pop3", (110,), starttls.pop3
    FTP = "ftp", (21,), starttls.ftp
    LDAP = "ldap", (389,), starttls_binary.ldap
    XMPP = "xmpp", (5222,), starttls.xmpp
    XMPP_SERVER = "xmpp-server", (5269,), starttls.xmpp_server
    NNTP = "nntp", (119,), starttls.nntp
    SIEVE = "sieve", (4190,), starttls.sieve
    POSTGRES = "postgres", (5432,), starttls_binary.postgres
    MYSQL = "mysql", (3306,), starttls_binary.mysql
    RDP = "rdp", (3389,), starttls_binary.rdp
    MSSQL = "mssql", (1433,), starttls_binary.mssql


DIRECT_SCHEMES: dict[str, int | None] = {
    "https": 443,
    "ldaps": 636,
    "imaps": 993,
    "pop3s": 995,
    "smtps": 465,
    "tls": None,  # no default: the port must be given
}
"""Schemes of direct TLS (no dialogue), each with its default port."""

# scheme -> (STARTTLS protocol or None for direct TLS, default port or None when it has none)
SCHEMES: dict[str, tuple[Protocol | None, int | None]] = {
    **{scheme: (None, port) for scheme, port in DIRECT_SCHEMES.items()},
    **{scheme: (p, port) for p in Protocol for scheme, port in p.schemes.items()},
}

# Well-known plaintext ports; every other port is direct TLS (SPEC section 2, STARTTLS).
PORTS: dict[int, Protocol] = {port: p for p in Protocol for port in p.ports}

AUTO = "auto"
NONE = "none"
STARTTLS_CHOICES = (AUTO, NONE, *(p.value for p in Protocol))


def select(
    *, scheme_protocol: Protocol | None, has_scheme: bool, port: int, option: str
) -> Protocol | None:
    """Pick the dialogue: the scheme, else ``--starttls``, else the port table, else direct TLS."""
    if has_scheme:
        return scheme_protocol
    if option == NONE:
        return None
    if option != AUTO:
        return Protocol(option)
    return PORTS.get(port)
