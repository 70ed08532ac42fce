"""The STARTTLS protocol names and the tables that pick one: schemes and well-known ports."""

from __future__ import annotations

from enum import StrEnum


class Protocol(StrEnum):
    """A plaintext dialogue that leads to TLS on the same connection."""

    SMTP = "smtp"
    LMTP = "lmtp"
    IMAP = "imap"
    POP3 = "pop3"
    FTP = "ftp"
    LDAP = "ldap"
    XMPP = "xmpp"
    XMPP_SERVER = "xmpp-server"
    NNTP = "nntp"
    SIEVE = "sieve"
    POSTGRES = "postgres"
    MYSQL = "mysql"
    RDP = "rdp"
    MSSQL = "mssql"


# scheme -> (STARTTLS protocol or None for direct TLS, default port or None when it has none)
SCHEMES: dict[str, tuple[Protocol | None, int | None]] = {
    "https": (None, 443),
    "ldaps": (None, 636),
    "imaps": (None, 993),
    "pop3s": (None, 995),
    "smtps": (None, 465),
    "tls": (None, None),
    "smtp": (Protocol.SMTP, 25),
    "submission": (Protocol.SMTP, 587),
    "lmtp": (Protocol.LMTP, 24),
    "imap": (Protocol.IMAP, 143),
    "pop3": (Protocol.POP3, 110),
    "ftp": (Protocol.FTP, 21),
    "ldap": (Protocol.LDAP, 389),
    "xmpp": (Protocol.XMPP, 5222),
    "xmpp-server": (Protocol.XMPP_SERVER, 5269),
    "nntp": (Protocol.NNTP, 119),
    "sieve": (Protocol.SIEVE, 4190),
    "postgres": (Protocol.POSTGRES, 5432),
    "mysql": (Protocol.MYSQL, 3306),
    "rdp": (Protocol.RDP, 3389),
    "mssql": (Protocol.MSSQL, 1433),
}

# Well-known plaintext ports; every other port is direct TLS (SPEC section 2, STARTTLS).
PORTS: dict[int, Protocol] = {
    21: Protocol.FTP,
    24: Protocol.LMTP,
    25: Protocol.SMTP,
    587: Protocol.SMTP,
    110: Protocol.POP3,
    119: Protocol.NNTP,
    143: Protocol.IMAP,
    389: Protocol.LDAP,
    1433: Protocol.MSSQL,
    3306: Protocol.MYSQL,
    3389: Protocol.RDP,
    4190: Protocol.SIEVE,
    5222: Protocol.XMPP,
    5269: Protocol.XMPP_SERVER,
    5432: Protocol.POSTGRES,
}

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
