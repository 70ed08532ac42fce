"""Which dialogue runs before TLS for each protocol of the table.

The protocol table (``protocols``) is data and the dialogues (``starttls``,
``starttls_binary``) are code that reads a protocol's replies; this module is the one place
that joins them, so neither imports the other. A protocol without a dialogue here fails at
import, as a table row without ports does.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from trackssl_agent.engine import starttls, starttls_binary
from trackssl_agent.engine.protocols import Protocol
from trackssl_agent.engine.starttls import Dialogue


def complete(dialogues: Mapping[Protocol, Dialogue]) -> Mapping[Protocol, Dialogue]:
    """``dialogues``, read-only, once every protocol of the table has a callable one."""
    missing = [p.value for p in Protocol if not callable(dialogues.get(p))]
    if missing:
        raise TypeError(f"no dialogue for protocol {', '.join(missing)}")
    return MappingProxyType(dict(dialogues))


DIALOGUES = complete({
    Protocol.SMTP: starttls.smtp,
    Protocol.LMTP: starttls.lmtp,
    Protocol.IMAP: starttls.imap,
    Protocol.POP3: starttls.pop3,
    Protocol.FTP: starttls.ftp,
    Protocol.LDAP: starttls_binary.ldap,
    Protocol.XMPP: starttls.xmpp,
    Protocol.XMPP_SERVER: starttls.xmpp_server,
    Protocol.NNTP: starttls.nntp,
    Protocol.SIEVE: starttls.sieve,
    Protocol.POSTGRES: starttls_binary.postgres,
    Protocol.MYSQL: starttls_binary.mysql,
    Protocol.RDP: starttls_binary.rdp,
    Protocol.MSSQL: starttls_binary.mssql,
})  # fmt: skip
"""Each protocol's dialogue: a function ``(conn, host) -> RecordIO`` or a ``CodedDialogue``."""
