"""Real protocol servers on loopback for the STARTTLS tests, each presenting a test chain.

Packaged servers (slapd, PostgreSQL, MariaDB, vsftpd, dovecot, prosody, xrdp) run as
subprocesses from throw-away config and data dirs; aiosmtpd runs in-process. NNTP and SQL
Server have no server that runs here, so small servers written from their specifications
(RFC 4642, MS-TDS 2.2.6.5) stand in; so does one for RDP refusals (MS-RDPBCGR 2.2.1.2.2),
and the misbehaving servers (stalling, trickling, injecting plaintext).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP

from tests.certs import Chain, make_chain
from tests.listeners import PortTaken, own_listeners, unused_ports
from tests.privileges import need_root
from tests.shared_dirs import shared_dir
from tests.tls_servers import TcpServer, server_context
from trackssl_agent.engine.starttls_binary import parse_prelogin, prelogin_options, tds_packets

READY_TIMEOUT = 30.0
ATTEMPTS = 5
"""Starts of a server, each on new ports, before a collision on its ports is a failure."""


def need(binary: str) -> str:
    """The path of ``binary``; a missing one fails under CI=true and skips elsewhere."""
    path = shutil.which(binary) or next(
        (str(p) for p in Path("/usr/lib/postgresql").glob(f"*/bin/{binary}")), None
    )
    if path is None:
        message = f"{binary} is not installed (scripts/install-servers.sh installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    """A fresh dir outside pytest's 0700 tmp tree and $TMPDIR, so a server's own user can
    reach it (``shared_dir``)."""
    path = shared_dir(prefix)
    (path / "tmp").mkdir()
    (path / "tmp").chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def server_environ(root: Path) -> dict[str, str]:
    """This process's environment with $TMPDIR in the server's ``workdir``: the runner's
    may be private (0700), and InnoDB, for one, writes its temporary files there."""
    return {**os.environ, "TMPDIR": str(root / "tmp")}


def chown_tree(path: Path, user: str) -> None:
    """Give ``path`` and everything under it to ``user``."""
    entry = pwd.getpwnam(user)
    for item in [path, *path.rglob("*")]:
        os.chown(item, entry.pw_uid, entry.pw_gid)


def server_chain(directory: Path, *, user: str | None = None, cn: str = "localhost") -> Chain:
    """A chain whose key file only the server's ``user`` can read (PostgreSQL insists)."""
    chain = make_chain(directory / "tls", cn=cn)
    if user is not None:
        chown_tree(directory / "tls", user)
    return chain


class NotListening(Exception):
    """The server process ended before it listened on all its ports."""


def wait_ports(proc: subprocess.Popen[bytes], ports: list[int], log: Path) -> None:
    """Wait until the server (its session) alone listens on every port.

    PortTaken when another process listens on one, NotListening when the server exits
    first (both stop it; its ports may have been taken meanwhile, so new ones may work);
    RuntimeError with the server's log when it does not listen in time.
    """
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if own_listeners(proc.pid, ports):
                return
        except PortTaken:
            stop(proc)
            raise
        if proc.poll() is not None:
            raise NotListening(f"{proc.args!r} exited: {tail(log)}")
        time.sleep(0.05)
    stop(proc)
    raise RuntimeError(f"{proc.args!r} did not listen on {ports} in time: {tail(log)}")


def tail(log: Path) -> str:
    """The end of a server's log, for a failure message."""
    return log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"


def stop(proc: subprocess.Popen[bytes], stop_signal: int = signal.SIGTERM) -> None:
    """Stop the process group the server was started in (forking daemons included).

    The data is thrown away, so a server slow to shut down (dovecot takes seconds) is killed.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, stop_signal)
        try:
            proc.wait(1)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def process(
    command: Callable[[list[int]], list[str]],
    *,
    count: int,
    log: Path,
    user: str | None = None,
    stop_signal: int = signal.SIGTERM,
) -> Iterator[list[int]]:
    """Run ``command(ports)`` (as ``user``) in its own session until the block ends, on
    ``count`` ports it alone listens on; yields the ports.

    The ports are picked free, then the server binds them: should another process take
    one first, or the server exit before listening, it starts again on new ports.
    """
    failures = []
    for _ in range(ATTEMPTS):
        ports = unused_ports(count)
        argv = command(ports)
        argv = ["runuser", "-u", user, "--", *argv] if user else argv
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=log.parent,  # a dir the server's user can enter
                env=server_environ(log.parent),
            )  # fmt: skip
        try:
            wait_ports(proc, ports, log)
        except (PortTaken, NotListening) as exc:
            failures.append(str(exc))
            continue
        try:
            yield ports
        finally:
            stop(proc, stop_signal)
        return
    raise RuntimeError(f"no start of the server listened on its ports: {failures}")


@dataclass(frozen=True)
class Running:
    """A started server: its ports by service name and the chain it presents."""

    ports: dict[str, int]
    chain: Chain | None


# --- packaged servers --------------------------------------------------------------------


@contextlib.contextmanager
def slapd(*, tls: bool = True) -> Iterator[Running]:
    """OpenLDAP slapd (GnuTLS) with StartTLS; ``tls=False`` leaves TLS unconfigured."""
    binary = need("slapd")
    with workdir("slapd") as root:
        chain = server_chain(root) if tls else None
        lines = [f"pidfile {root}/slapd.pid", f"argsfile {root}/slapd.args"]
        if chain is not None:
            lines += [
                f"TLSCertificateFile {chain.cert_file}",
                f"TLSCertificateKeyFile {chain.key_file}",
            ]
        (root / "slapd.conf").write_text("\n".join(lines) + "\n")

        def command(ports: list[int]) -> list[str]:
            url = f"ldap://127.0.0.1:{ports[0]}/"
            return [binary, "-d", "0", "-f", str(root / "slapd.conf"), "-h", url]

        with process(command, count=1, log=root / "slapd.log") as (port,):
            yield Running({"ldap": port}, chain)


@contextlib.contextmanager
def postgres() -> Iterator[Running]:
    """PostgreSQL with ssl=on.

    It refuses to run as root and wants its key 0600 and its own, so all runs as postgres.
    """
    need_root("PostgreSQL runs as its own user, postgres (runuser)")
    initdb, binary = need("initdb"), need("postgres")
    with workdir("postgres") as root:
        chain = server_chain(root, user="postgres")
        chown_tree(root, "postgres")
        data = root / "data"
        subprocess.run(
            ["runuser", "-u", "postgres", "--", initdb, "-D", str(data), "-U", "postgres",
             "-A", "trust", "--no-sync", "--no-instructions"],
            check=True, capture_output=True, cwd=root, env=server_environ(root),
        )  # fmt: skip

        def command(ports: list[int]) -> list[str]:
            return [
                binary, "-D", str(data), "-p", str(ports[0]), "-h", "127.0.0.1",
                "-k", str(data), "-c", "ssl=on", "-c", "fsync=off",
                "-c", f"ssl_cert_file={chain.cert_file}",
                "-c", f"ssl_key_file={chain.key_file}",
            ]  # fmt: skip

        # SIGINT is PostgreSQL's fast shutdown; SIGTERM would wait for clients.
        log = root / "postgres.log"
        with process(
            command, count=1, log=log, user="postgres", stop_signal=signal.SIGINT
        ) as ports:
            yield Running({"postgres": ports[0]}, chain)


@contextlib.contextmanager
def mariadb() -> Iterator[Running]:
    """MariaDB with --ssl-cert/--ssl-key and grant tables skipped: only the greeting matters."""
    need_root("mariadbd --user=mysql switches to the mysql user")
    binary = need("mariadbd")
    installer = need("mariadb-install-db")
    with workdir("mariadb") as root:
        chain = server_chain(root, user="mysql")
        data = root / "data"
        data.mkdir()
        chown_tree(root, "mysql")
        subprocess.run(
            [installer, "--no-defaults", f"--datadir={data}", "--user=mysql",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            check=True, capture_output=True, cwd=root, env=server_environ(root),
        )  # fmt: skip

        def command(ports: list[int]) -> list[str]:
            return [
                binary, "--no-defaults", "--user=mysql", "--skip-grant-tables",
                "--bind-address=127.0.0.1", f"--port={ports[0]}",
                f"--socket={root}/mysql.sock", f"--datadir={data}",
                f"--pid-file={root}/mysql.pid", "--skip-log-bin",
                "--innodb-buffer-pool-size=8M", "--skip-name-resolve",
                f"--ssl-cert={chain.cert_file}", f"--ssl-key={chain.key_file}",
            ]  # fmt: skip

        with process(command, count=1, log=root / "mariadb.log") as (port,):
            yield Running({"mysql": port}, chain)


@contextlib.contextmanager
def vsftpd() -> Iterator[Running]:
    """vsftpd with ``ssl_enable=YES``: it offers ``AUTH TLS``."""
    need_root("vsftpd runs as root only")
    binary = need("vsftpd")
    with workdir("vsftpd") as root:
        chain = server_chain(root)
        empty = root / "empty"
        empty.mkdir()
        conf = root / "vsftpd.conf"

        def command(ports: list[int]) -> list[str]:
            settings = {
                "listen": "YES", "listen_ipv6": "NO", "listen_address": "127.0.0.1",
                "listen_port": str(ports[0]), "background": "NO", "ssl_enable": "YES",
                "rsa_cert_file": str(chain.cert_file),
                "rsa_private_key_file": str(chain.key_file),
                "seccomp_sandbox": "NO", "secure_chroot_dir": str(empty),
                "anonymous_enable": "NO", "local_enable": "YES", "xferlog_enable": "NO",
                "vsftpd_log_file": str(root / "vsftpd.log"),
            }  # fmt: skip
            conf.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
            return [binary, str(conf)]

        with process(command, count=1, log=root / "stdout.log") as (port,):
            yield Running({"ftp": port}, chain)


@contextlib.contextmanager
def dovecot() -> Iterator[Running]:
    """dovecot with imap, pop3 and managesieve listeners; ssl=yes offers STARTTLS on each."""
    need_root("dovecot switches to its users dovecot and dovenull")
    binary = need("dovecot")
    with workdir("dovecot") as root:
        chain = server_chain(root)
        conf = root / "dovecot.conf"

        def command(numbers: list[int]) -> list[str]:
            ports = dict(zip(("imap", "pop3", "sieve"), numbers, strict=True))
            conf.write_text(
                f"""
base_dir = {root}/run
state_dir = {root}/state
instance_name = trackssl-{ports["imap"]}
log_path = {root}/dovecot.log
protocols = imap pop3 sieve
listen = 127.0.0.1
ssl = yes
ssl_cert = <{chain.cert_file}
ssl_key = <{chain.key_file}
default_internal_user = dovecot
default_login_user = dovenull
mail_location = mbox:{root}/mail
passdb {{
  driver = static
  args = nopassword=y
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={root}/mail
}}
service imap-login {{
  inet_listener imap {{
    port = {ports["imap"]}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {ports["pop3"]}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service managesieve-login {{
  inet_listener sieve {{
    port = {ports["sieve"]}
  }}
}}
"""
            )
            return [binary, "-F", "-c", str(conf)]

        with process(command, count=3, log=root / "stdout.log") as numbers:
            yield Running(dict(zip(("imap", "pop3", "sieve"), numbers, strict=True)), chain)


@contextlib.contextmanager
def prosody(domain: str = "localhost") -> Iterator[Running]:
    """prosody with c2s and s2s listeners for VirtualHost ``domain``; it runs as prosody."""
    need_root("prosody runs as its own user, prosody (runuser)")
    binary = need("prosody")
    with workdir("prosody") as root:
        chain = server_chain(root, user="prosody", cn=domain)
        (root / "data").mkdir()
        conf = root / "prosody.cfg.lua"

        def command(numbers: list[int]) -> list[str]:
            ports = dict(zip(("xmpp", "xmpp-server"), numbers, strict=True))
            conf.write_text(
                f"""
pidfile = "{root}/prosody.pid"
data_path = "{root}/data"
daemonize = false
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {ports["xmpp"]} }}
s2s_ports = {{ {ports["xmpp-server"]} }}
c2s_direct_tls_ports = {{ }}
s2s_direct_tls_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
log = {{ info = "{root}/prosody.log" }}
modules_enabled = {{ "tls", "dialback", "saslauth", "disco" }}
modules_disabled = {{ "posix" }}
certificates = "{root}/tls"
ssl = {{ certificate = "{chain.cert_file}", key = "{chain.key_file}" }}
VirtualHost "{domain}"
"""
            )
            chown_tree(root, "prosody")
            return [binary, "--config", str(conf), "-F"]

        log = root / "stdout.log"
        with process(command, count=2, log=log, user="prosody") as numbers:
            yield Running(dict(zip(("xmpp", "xmpp-server"), numbers, strict=True)), chain)


@contextlib.contextmanager
def xrdp(*, security_layer: str = "negotiate") -> Iterator[Running]:
    """xrdp: answers the X.224 Connection Request, then TLS; no session manager is needed."""
    binary = need("xrdp")
    with workdir("xrdp") as root:
        chain = server_chain(root)
        conf = root / "xrdp.ini"

        def command(ports: list[int]) -> list[str]:
            conf.write_text(
                f"""[Globals]
ini_version=1
fork=true
port=tcp://127.0.0.1:{ports[0]}
security_layer={security_layer}
crypt_level=high
certificate={chain.cert_file}
key_file={chain.key_file}
ssl_protocols=TLSv1.2, TLSv1.3

[Logging]
LogFile={root}/xrdp.log
LogLevel=INFO
EnableSyslog=false
"""
            )
            return [binary, "--nodaemon", "--config", str(conf)]

        with process(command, count=1, log=root / "stdout.log") as (port,):
            yield Running({"rdp": port}, chain)


@contextlib.contextmanager
def aiosmtpd(*, lmtp: bool = False, tls: bool = True) -> Iterator[Running]:
    """aiosmtpd's SMTP (or LMTP) server in this process; ``tls=False`` offers no STARTTLS."""
    with workdir("smtp") as root:
        chain = server_chain(root) if tls else None
        context = server_context(chain) if chain is not None else None
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))  # bound here: the port is ours from the start
        listener.listen(64)
        port: int = listener.getsockname()[1]

        class _Controller(Controller):
            def factory(self) -> Any:
                server_class = LMTP if lmtp else SMTP
                return server_class(self.handler, tls_context=context, hostname="mx.test")

            def _create_server(self) -> Any:
                return self.loop.create_server(self._factory_invoker, sock=listener)

        controller = _Controller(object(), hostname="127.0.0.1", port=port)
        controller.start()
        try:
            yield Running({"lmtp" if lmtp else "smtp": port}, chain)
        finally:
            controller.stop()


# --- servers written from the specifications ----------------------------------------------


def _read_line(conn: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        byte = conn.recv(1)
        if not byte:
            break
        line += byte
    return line


def _serve_tls(conn: socket.socket, context: ssl.SSLContext) -> None:
    with context.wrap_socket(conn, server_side=True) as tls, contextlib.suppress(OSError):
        tls.recv(1)


def nntp_server(chain: Chain | None, *, host: str = "127.0.0.1", port: int = 0) -> TcpServer:
    """NNTP per RFC 3977 and RFC 4642: greeting 200, CAPABILITIES, STARTTLS -> 382 or 580.

    No NNTP server in Debian runs without a news spool and cron jobs, hence this one.
    ``port`` 0 is a free one; the well-known 119 needs root.
    """
    context = server_context(chain) if chain is not None else None

    def handle(conn: socket.socket) -> None:
        conn.settimeout(10)
        conn.sendall(b"200 trackssl test NNTP service ready, posting allowed\r\n")
        while line := _read_line(conn):
            command = line.strip().upper()
            if command == b"CAPABILITIES":
                starttls = b"STARTTLS\r\n" if context else b""
                conn.sendall(
                    b"101 Capability list:\r\nVERSION 2\r\nREADER\r\n" + starttls + b".\r\n"
                )
            elif command == b"STARTTLS" and context is not None:
                conn.sendall(b"382 Continue with TLS negotiation\r\n")
                _serve_tls(conn, context)
                return
            elif command == b"STARTTLS":
                conn.sendall(b"580 Can not initiate TLS negotiation\r\n")
            else:
                conn.sendall(b"500 Unknown command\r\n")

    return TcpServer(handle, host=host, port=port)


def rdp_server(chain: Chain, *, failure: int | None = None) -> TcpServer:
    """RDP per MS-RDPBCGR 2.2.1.1/2.2.1.2: X.224 Connection Confirm with RDP_NEG_RSP
    selecting PROTOCOL_SSL, then TLS; ``failure`` answers RDP_NEG_FAILURE with that code.

    It pins the RDP_NEG_FAILURE path with a chosen failure code, which xrdp cannot be set to.
    """
    context = server_context(chain)

    def handle(conn: socket.socket) -> None:
        conn.settimeout(10)
        header = conn.recv(4, socket.MSG_WAITALL)
        version, _, length = struct.unpack("!BBH", header)
        tpdu = conn.recv(length - 4, socket.MSG_WAITALL)
        assert version == 3 and tpdu[1] == 0xE0, "not an X.224 Connection Request"
        _, _, _, requested = struct.unpack("<BBHI", tpdu[-8:])
        if failure is not None:
            negotiation = struct.pack("<BBHI", 0x03, 0, 8, failure)
        else:
            assert requested & 0x1, "the client did not ask for TLS"
            negotiation = struct.pack("<BBHI", 0x02, 0, 8, 0x1)
        x224 = bytes([6 + len(negotiation), 0xD0, 0, 0, 0x12, 0x34, 0]) + negotiation
        conn.sendall(struct.pack("!BBH", 3, 0, 4 + len(x224)) + x224)
        if failure is None:
            _serve_tls(conn, context)

    return TcpServer(handle)


def _read_tds(conn: socket.socket) -> tuple[int, bytes]:
    header = conn.recv(8, socket.MSG_WAITALL)
    if len(header) < 8:
        return -1, b""
    kind, _status, length, _spid, _packet, _window = struct.unpack("!BBHHBB", header)
    return kind, conn.recv(length - 8, socket.MSG_WAITALL)


def mssql_server(chain: Chain, *, encryption: int = 0x01) -> TcpServer:
    """SQL Server's pre-login per MS-TDS 2.2.6.5: PRELOGIN response (type 0x04) with
    VERSION, ENCRYPTION, INSTOPT, THREADID, MARS; then the TLS handshake inside PRELOGIN
    (0x12) packets. ``encryption=0x02`` is ENCRYPT_NOT_SUP: no handshake follows.

    SQL Server does not run on Debian, hence this one.
    """
    context = server_context(chain, max_version=ssl.TLSVersion.TLSv1_2)

    def handle(conn: socket.socket) -> None:
        conn.settimeout(10)
        kind, payload = _read_tds(conn)
        assert kind == 0x12, "not a PRELOGIN packet"
        assert 0x01 in parse_prelogin(payload), "PRELOGIN without ENCRYPTION"
        response = prelogin_options(
            [
                (0x00, bytes([16, 0, 0x03, 0xE8, 0, 0])),  # VERSION 16.0.1000, subbuild 0
                (0x01, bytes([encryption])),
                (0x02, b"\x00"),  # INSTOPT: the instance name matched
                (0x03, b""),  # THREADID: empty from the server
                (0x04, b"\x00"),  # MARS off
            ]
        )
        conn.sendall(tds_packets(0x04, response))
        if encryption == 0x02:
            return
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_side=True)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    conn.sendall(tds_packets(0x12, outgoing.read()))
                kind, payload = _read_tds(conn)
                if kind != 0x12:
                    return
                incoming.write(payload)
        if outgoing.pending:
            conn.sendall(tds_packets(0x12, outgoing.read()))
        with contextlib.suppress(OSError):
            conn.recv(1)

    return TcpServer(handle)


# --- misbehaving servers --------------------------------------------------------------


def stalling_server() -> TcpServer:
    """Sends the first line of a multi-line SMTP greeting, then nothing more."""

    def handle(conn: socket.socket) -> None:
        conn.sendall(b"220-mx.test ESMTP greeting starts\r\n")
        time.sleep(30)

    return TcpServer(handle)


def trickling_server(interval: float = 0.1) -> TcpServer:
    """Trickles an endless SMTP greeting one byte per ``interval``: never a whole line."""

    def handle(conn: socket.socket) -> None:
        for _ in range(300):
            conn.sendall(b"2")
            time.sleep(interval)

    return TcpServer(handle)


def injecting_server() -> TcpServer:
    """An SMTP server that queues plaintext behind its 220 reply to STARTTLS."""

    def handle(conn: socket.socket) -> None:
        conn.settimeout(10)
        conn.sendall(b"220 mx.test ESMTP\r\n")
        _read_line(conn)
        conn.sendall(b"250-mx.test\r\n250 STARTTLS\r\n")
        _read_line(conn)
        conn.sendall(b"220 go ahead\r\n250 injected plaintext\r\n")
        time.sleep(5)

    return TcpServer(handle)


@contextlib.contextmanager
def serving(server: TcpServer) -> Iterator[TcpServer]:
    """Close ``server`` at the end of the block."""
    try:
        yield server
    finally:
        server.close()


def scripted_server(
    greeting: bytes,
    replies: list[bytes],
    *,
    tls: ssl.SSLContext | None = None,
    received: list[bytes] | None = None,
    delay: float = 0.0,
) -> TcpServer:
    """Sends ``greeting``, then one reply per client write; with ``tls`` a handshake follows.

    For the dialogue details that the packaged servers do not show (multi-line greetings,
    refusals in each protocol's words) in the byte forms the RFCs give. Each write of the
    client lands in ``received``; ``delay`` holds back every line the server sends.
    """

    def handle(conn: socket.socket) -> None:
        conn.settimeout(10)
        if greeting:
            time.sleep(delay)
            conn.sendall(greeting)
        for reply in replies:
            data = conn.recv(4096)
            if not data:
                return
            if received is not None:
                received.append(data)
            time.sleep(delay)
            conn.sendall(reply)
        if tls is not None:
            _serve_tls(conn, tls)
        else:
            with contextlib.suppress(OSError):
                conn.recv(1)

    return TcpServer(handle)
