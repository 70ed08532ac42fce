"""The STARTTLS protocol table: each protocol with its well-known ports and the URL schemes
that pick it, in one row; the scheme and port tables are derived from it.

The table is data: which dialogue runs for a protocol is the engine's (``dialogues``), so
that the dialogues can name a protocol without importing one another in a circle. Adding a
protocol is adding a member here, its dialogue in ``starttls`` or ``starttls_binary`` and a
row in ``dialogues.DIALOGUES``, plus a test against a real server: a member cannot be
declared without a port and a scheme, nor imported without a dialogue.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Any


class Protocol(StrEnum):
    """A plaintext dialogue that leads to TLS on the same connection.

    Each member is ``name, well-known ports (the first is its scheme's default)``, plus
    other schemes when the protocol has more than the one named like it.
    """

    _value_: str
    ports: tuple[int, ...]
    """Plaintext ports that select this dialogue under ``--starttls auto`` (SPEC section 2)."""
    schemes: Mapping[str, int]
    """URL schemes that select this dialogue, each with its default port."""

    def __new__(cls, value: str, *row: Any) -> Protocol:
        # ``*row`` rather than named parameters: mypy would then demand them of the lookup
        # ``Protocol("smtp")`` too, which Enum routes elsewhere. A member without ports (or
        # with schemes that are not a mapping) fails here, when the module is imported.
        well_known = tuple(row[0]) if row else ()
        by_scheme = row[1] if len(row) == 2 else {value: well_known[0]} if well_known else None
        if len(row) > 2 or not well_known or not isinstance(by_scheme, Mapping):
            raise TypeError(f"protocol {value}: expected (ports[, schemes])")
        member = str.__new__(cls, value)
        member._value_ = value
        member.ports = well_known
        member.schemes = MappingProxyType(dict(by_scheme))
        return member

    SMTP = "smtp", (25, 587), {"smtp": 25, "submission": 587}
    LMTP = "lmtp", (24,)
    IMAP = "imap", (143,)
    POP3 = "pop3", (110,)
    FTP = "ftp", (21,)
    LDAP = "ldap", (389,)
    XMPP = "xmpp", (5222,)
    XMPP_SERVER = "xmpp-server", (5269,)
    NNTP = "nntp", (119,)
    SIEVE = "sieve", (4190,)
    POSTGRES = "postgres", (5432,)
    MYSQL = "mysql", (3306,)
    RDP = "rdp", (3389,)
    MSSQL = "mssql", (1433,)


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
