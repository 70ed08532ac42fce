"""STARTTLS and pre-TLS dialogues: one small function per protocol.

Each dialogue waits for every server reply before its next command and raises
DialogueError with the server's own words when STARTTLS is refused or not offered.
It returns the RecordIO the TLS handshake runs over: the connection itself for every
protocol but mssql, whose TLS records travel inside TDS pre-login packets.
"""

from __future__ import annotations

from collections.abc import Callable

from trackssl_agent.protocols import Protocol
from trackssl_agent.transport import Conn, DialogueError, RecordIO

Dialogue = Callable[[Conn, str], RecordIO]

DIALOGUES: dict[Protocol, Dialogue] = {}


def negotiate(protocol: Protocol, conn: Conn, host: str) -> RecordIO:
    """Run the dialogue for ``protocol`` on ``conn``; ``host`` is the name the server knows."""
    dialogue = DIALOGUES.get(protocol)
    if dialogue is None:
        raise DialogueError(f"STARTTLS for {protocol.value} is not implemented yet")
    io = dialogue(conn, host)
    stray = conn.pending()
    if stray:
        raise DialogueError(
            f"the server sent {len(stray)} unexpected bytes before TLS started "
            "(possible STARTTLS injection)"
        )
    return io
