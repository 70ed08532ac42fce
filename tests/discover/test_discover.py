"""``discover``: NETWORK and --ports parsing, the limits, TRACKSSL_ALLOW, the pacing, and
scans of real loopback servers whose targets file ``check-once --targets`` then probes.

Only 127.0.0.0/8 and ::1 are ever contacted; larger networks appear only in plans that
must be refused before any connection.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pty
import re
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from tests.certs import Chain, der, make_cert, new_key
from tests.child_process import child_env, run_agent, run_agent_measured
from tests.cli_helpers import agent_environ, run_cli
from tests.hostile_servers import raw_tls12_server
from tests.listeners import closed_port, closed_ports
from tests.privileges import need_root
from tests.protocol_servers import nntp_server
from tests.tls_servers import TcpServer, http_server, server_context, tls_handler
from trackssl_agent.discover.plan import (
    MAX_ADDRESSES,
    Address,
    default_ports,
    make_resolver,
    parse_ports,
    plan,
)
from trackssl_agent.discover.scan import (
    RateLimiter,
    endpoint_target,
    json_entry,
    render_json,
    targets_line,
)
from trackssl_agent.engine import allow, protocols
from trackssl_agent.engine.results import ProbeResult
from trackssl_agent.engine.targets import parse_target, read_targets_file
from trackssl_agent.errors import UsageError
from trackssl_agent.render import output

ROOT = Path(__file__).resolve().parents[2]
SUMMARY = re.compile(
    r"^discover: (?P<addresses>[\d,]+) address(es)? x (?P<ports>[\d,]+) ports?, "
    r"(?P<tried>[\d,]+) tried, (?P<open>[\d,]+) open, (?P<certs>[\d,]+) with a certificate, "
    r"(?:(?P<outside>[\d,]+) outside TRACKSSL_ALLOW, )?elapsed (?P<elapsed>\d+\.\d) s$",
    re.MULTILINE,
)


def _no_lookup(name: str, family: int) -> list[Address]:
    raise AssertionError(f"no name should be resolved here, got {name!r}")


@contextlib.contextmanager
def same_port(
    handler: Callable[[socket.socket], None], hosts: list[str], closed: tuple[str, ...] = ()
) -> Iterator[list[Any]]:
    """Servers running ``handler`` on one port shared by all of ``hosts``; on the ``closed``
    hosts the port is bound and never listens, so a scan finds nobody else's server there."""
    for _ in range(20):
        servers: list[TcpServer] = []
        held: list[socket.socket] = []
        try:
            first = TcpServer(handler, host=hosts[0])
            servers.append(first)
            servers += [TcpServer(handler, host=h, port=first.port) for h in hosts[1:]]
            for host in closed:
                held.append(socket.socket())
                held[-1].bind((host, first.port))
        except OSError as exc:
            for server in servers:
                server.close()
            for sock in held:
                sock.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            continue
        try:
            yield servers
        finally:
            for server in servers:
                server.close()
            for sock in held:
                sock.close()
        return
    raise AssertionError(f"no port free on all of {hosts}")


def summary(err: str) -> dict[str, str]:
    """The fields of the summary line on stderr (which must be there)."""
    match = SUMMARY.search(err)
    assert match, err
    return {k: v for k, v in match.groupdict().items() if v is not None}


def expires(chain: Chain) -> str:
    """The leaf's expiry date as the targets-file comment writes it."""
    return chain.leaf.not_valid_after_utc.strftime("%Y-%m-%d")


# --- ports ---------------------------------------------------------------------------


def _readme_ports() -> set[int]:
    """The ports of the docs' direct-TLS scheme list and their STARTTLS table
    (docs/targets-and-protocols.md)."""
    readme = (ROOT / "docs" / "targets-and-protocols.md").read_text()
    direct = re.search(r"^Direct TLS schemes: (.*?)\(no default", readme, re.M | re.S)
    assert direct
    ports = {int(p) for p in re.findall(r"`\w+` (\d+)", direct.group(1))}
    section = readme.split("\n## STARTTLS protocols\n", 1)[1].split("\n## ", 1)[0]
    for row in re.findall(r"^\| [a-z0-9-]+ \| `.*$", section, re.M):
        ports |= {int(p) for p in row.split("|")[4].replace(" ", "").split(",")}
    return ports


def test_default_ports_are_the_readme_tables_plus_8443() -> None:
    """The default port list is every direct-TLS and STARTTLS port of the docs' tables
    (docs/targets-and-protocols.md), and 8443."""
    readme = _readme_ports()
    assert len(readme) >= 20
    assert set(default_ports()) == readme | {8443}
    assert list(default_ports()) == sorted(default_ports())


def test_ports_parser_takes_lists_and_ranges() -> None:
    """--ports: a comma list and ranges, sorted, each port once."""
    assert parse_ports("443,636,8000-8003") == (443, 636, 8000, 8001, 8002, 8003)
    assert parse_ports(" 25 , 25,24-25 ") == (24, 25)
    assert parse_ports("1,65535") == (1, 65535)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "is not a port or a range"),
        ("443,", "is not a port or a range"),
        ("0", "outside 1-65535"),
        ("65536", "outside 1-65535"),
        ("10-5", "ends before it starts"),
        ("1-2-3", "is not a port or a range"),
        ("https", "is not a port or a range"),
        ("٤٤٣", "is not a port or a range"),
    ],
)
def test_ports_parser_refuses_bad_items(text: str, says: str) -> None:
    """A bad --ports item is a usage error quoting what is wrong."""
    with pytest.raises(UsageError, match=says):
        parse_ports(text)


@given(st.sets(st.integers(1, 65535), min_size=1, max_size=30))
def test_ports_parser_round_trips_any_list(ports: set[int]) -> None:
    """Any set of ports written as a comma list parses back to itself, sorted."""
    assert parse_ports(",".join(map(str, ports))) == tuple(sorted(ports))


def test_each_pair_is_written_as_check_once_reads_it() -> None:
    """A pair's target text parses back to the same port and dialogue; a scheme only where
    a dialogue is needed (submission on 587), IPv6 bracketed."""
    v4, v6 = plan(["127.0.0.1", "::1"], [443], resolver=_no_lookup).addresses
    for port in default_ports():
        for address in (v4, v6):
            target = endpoint_target(address, port)
            parsed = parse_target(target.text)
            assert (parsed.host, parsed.port, parsed.starttls) == (
                str(address), port, protocols.PORTS.get(port),
            )  # fmt: skip
            assert ("://" in target.text) == (port in protocols.PORTS)
    assert endpoint_target(v4, 587).text == "submission://127.0.0.1:587"
    assert endpoint_target(v4, 389).text == "ldap://127.0.0.1:389"
    assert endpoint_target(v6, 8443).text == "[::1]:8443"


def test_targets_file_comment_cannot_start_a_line_of_its_own() -> None:
    """A subject holding a newline is escaped in the comment: each endpoint stays one line,
    and the file still names only the endpoints found."""
    key = new_key("ec")
    cert = make_cert(
        cn="evil\n10.9.9.9:443 # x", key=key, not_after=datetime(2031, 5, 6, tzinfo=UTC)
    )
    address = plan(["127.0.0.1"], [443], resolver=_no_lookup).addresses[0]
    result = ProbeResult(
        target=endpoint_target(address, 636), servername=None, address="127.0.0.1",
        probed_at=datetime.now(UTC), elapsed_ms=1.0, chain=(der(cert),),
    )  # fmt: skip
    text = targets_line(result)
    assert text == "127.0.0.1:636 # CN=evil\\n10.9.9.9:443 # x, expires 2031-05-06\n"
    parsed = read_targets_file(text.splitlines(), source="found.txt", starttls=protocols.AUTO)
    assert [t.text for t in parsed] == ["127.0.0.1:636"]


# --- the plan: networks, limits, TRACKSSL_ALLOW ---------------------------------------


@pytest.mark.parametrize(
    ("network", "expected"),
    [
        ("127.0.0.0/29", [f"127.0.0.{n}" for n in range(1, 7)]),
        ("127.0.0.5/30", ["127.0.0.5", "127.0.0.6"]),
        ("127.0.0.4/31", ["127.0.0.4", "127.0.0.5"]),
        ("127.0.0.7/32", ["127.0.0.7"]),
        ("127.0.0.7", ["127.0.0.7"]),
        ("::1/128", ["::1"]),
        ("[::1]", ["::1"]),
    ],
)
def test_networks_expand_without_network_and_broadcast(network: str, expected: list[str]) -> None:
    """IPv4 networks larger than /31 lose their network and broadcast addresses; a /31, a
    /32, an address and ::1/128 keep all theirs."""
    scan = plan([network], [443], resolver=_no_lookup)
    assert [str(a) for a in scan.addresses] == expected
    assert scan.outside == 0


def test_overlapping_networks_give_each_address_once_sorted() -> None:
    """Overlapping arguments contact each address once, IPv4 first, in numeric order."""
    scan = plan(["::1", "127.0.0.10", "127.0.0.8/30", "127.0.0.9"], [1, 2], resolver=_no_lookup)
    assert [str(a) for a in scan.addresses] == ["127.0.0.9", "127.0.0.10", "::1"]
    assert scan.pairs == 6


def test_host_name_expands_to_all_its_addresses() -> None:
    """A host name scans every address the probe engine's resolver returns for it."""
    asked: list[tuple[str, int]] = []

    def getaddrinfo(host: str, port: int, family: int, kind: int) -> list[tuple[Any, ...]]:
        asked.append((host, family))
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.3", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", port)),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)),
        ]

    resolver = make_resolver(timeout=2, getaddrinfo=getaddrinfo)
    scan = plan(["scan.test"], [443], family=socket.AF_INET6, resolver=resolver)
    assert asked == [("scan.test", socket.AF_INET6)]
    assert [str(a) for a in scan.addresses] == ["127.0.0.2", "127.0.0.3", "::1"]


def test_unresolvable_name_is_a_usage_error() -> None:
    """A host name without addresses is a usage error naming it."""

    def getaddrinfo(*_args: Any) -> list[tuple[Any, ...]]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    resolver = make_resolver(timeout=2, getaddrinfo=getaddrinfo)
    with pytest.raises(UsageError, match=r"'nowhere\.test'.*cannot resolve nowhere\.test"):
        plan(["nowhere.test"], [443], resolver=resolver)


def test_a_name_without_an_address_of_the_family_is_said_as_probe_says_it() -> None:
    """-6 and a name with IPv4 addresses only: a usage error in probe's words (the name has
    no IPv6 address), not a DNS failure."""

    def getaddrinfo(host: str, port: int, family: int, *_rest: Any) -> list[tuple[Any, ...]]:
        if family == socket.AF_INET6:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.3", port))]

    resolver = make_resolver(timeout=2, getaddrinfo=getaddrinfo)
    with pytest.raises(UsageError) as refused:
        plan(["v4only.test"], [443], family=socket.AF_INET6, resolver=resolver)
    assert str(refused.value) == (
        "discover: 'v4only.test': -6 given but v4only.test has no IPv6 address, only IPv4; "
        "drop -6 to probe it"
    )


@pytest.mark.parametrize("bad", ["127.0.0.1:443", "https://127.0.0.1", "10.0.0.0/33", "a b"])
def test_argument_that_is_no_network_is_a_usage_error(bad: str) -> None:
    """An argument that is neither a CIDR, an address nor a host name is a usage error."""
    with pytest.raises(UsageError, match=re.escape(bad)):
        plan([bad], [443], resolver=make_resolver(timeout=1))


def test_family_excludes_the_other_networks() -> None:
    """-4 with an IPv6 network (and -6 with IPv4) is a usage error, not an empty scan."""
    with pytest.raises(UsageError, match=re.escape("-4 given but ::1/128 is an IPv6 address")):
        plan(["::1/128"], [443], family=socket.AF_INET, resolver=_no_lookup)
    with pytest.raises(UsageError, match=re.escape("-4 given but ::/127 is an IPv6 network")):
        plan(["::/127"], [443], family=socket.AF_INET, resolver=_no_lookup)
    with pytest.raises(UsageError, match=re.escape("-6 given but 127.0.0.1 is an IPv4 address")):
        plan(["127.0.0.1"], [443], family=socket.AF_INET6, resolver=_no_lookup)


def test_more_addresses_than_the_limit_is_refused_before_expanding() -> None:
    """More than 65,536 addresses is a usage error, found without listing them (a /64's
    2**64 would never end; the bound leaves room for a loaded runner)."""
    with pytest.raises(UsageError, match="more than the 65,536 allowed"):
        plan(["127.0.0.0/15"], [443], resolver=_no_lookup)
    started = time.monotonic()
    with pytest.raises(UsageError, match="18,446,744,073,709,551,616 addresses"):
        plan(["fd00::/64"], [443], resolver=_no_lookup)
    assert time.monotonic() - started < 10
    # /16 less its network and broadcast: the limit itself is fine.
    assert len(plan(["127.0.0.0/16"], [443], resolver=_no_lookup).addresses) == MAX_ADDRESSES - 2


def test_addresses_of_several_arguments_count_together() -> None:
    """Two networks within the limit each but beyond it together are refused."""
    with pytest.raises(UsageError, match="hold 65,788 addresses, more than the 65,536 allowed"):
        plan(["127.0.0.0/16", "127.1.0.0/24"], [443], resolver=_no_lookup)


def test_more_pairs_than_the_limit_is_refused_unless_raised() -> None:
    """More than 1,048,576 address x port pairs is a usage error; --max-pairs raises it."""
    ports = list(range(1, 18))
    with pytest.raises(UsageError, match=r"1,114,078 pairs, more than 1,048,576.*--max-pairs"):
        plan(["127.0.0.0/16"], ports, resolver=_no_lookup)
    raised = plan(["127.0.0.0/16"], ports, max_pairs=2_000_000, resolver=_no_lookup)
    assert raised.pairs == 65_534 * 17
    with pytest.raises(
        UsageError,
        match=r"holds 262,142 addresses, more than the 131,072 allowed; .* raise --max-pairs",
    ):
        plan(["127.0.0.0/14"], [443], max_pairs=131_072, resolver=_no_lookup)
    with pytest.raises(UsageError, match="more than the 100 allowed"):
        plan(["127.0.0.0/24"], [443], max_pairs=100, resolver=_no_lookup)


def test_allow_list_leaves_addresses_out_and_counts_them() -> None:
    """Addresses outside TRACKSSL_ALLOW are left out of the plan and counted."""
    allowed = allow.parse("127.0.0.2/32,127.0.0.4/31")
    scan = plan(["127.0.0.0/29"], [443], allow=allowed, resolver=_no_lookup)
    assert [str(a) for a in scan.addresses] == ["127.0.0.2", "127.0.0.4", "127.0.0.5"]
    assert (scan.outside, scan.total_addresses) == (3, 6)


def test_allow_glob_matches_a_host_name_argument() -> None:
    """A TRACKSSL_ALLOW glob lets in the addresses of a host name argument it matches."""

    def getaddrinfo(host: str, port: int, *_args: Any) -> list[tuple[Any, ...]]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", port))]

    resolver = make_resolver(timeout=2, getaddrinfo=getaddrinfo)
    allowed = allow.parse("*.corp.test")
    scan = plan(["ldap.corp.test", "127.0.0.3"], [389], allow=allowed, resolver=resolver)
    assert [str(a) for a in scan.addresses] == ["127.0.0.2"]
    assert scan.outside == 1


# --- pacing ---------------------------------------------------------------------------


def test_rate_limiter_paces_to_the_rate() -> None:
    """101 attempts at 100 a second take one second of (injected) clock."""
    now = [0.0]
    limiter = RateLimiter(100, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    for _ in range(101):
        limiter.wait()
    assert now[0] == pytest.approx(1.0)


def test_rate_limiter_allows_only_its_burst_ahead() -> None:
    """A burst of 10 passes at once; after it the rate holds, and idling saves no credit
    beyond the burst."""
    now = [0.0]
    limiter = RateLimiter(
        100, burst=10, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s)
    )
    for _ in range(10):
        limiter.wait()
    assert now[0] == 0.0
    for _ in range(100):
        limiter.wait()
    assert now[0] == pytest.approx(1.0)
    now[0] += 60
    for _ in range(110):
        limiter.wait()
    assert now[0] == pytest.approx(62.0)


def test_rate_option_paces_real_connection_attempts(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--rate 40 spreads 30 attempts (closed ports) over at least 0.7 s."""
    started = time.monotonic()
    code, out, err = run_cli(
        ["discover", "127.0.0.11", "--ports", closed_ports(30), "--rate", "40"], capsys
    )
    wall = time.monotonic() - started
    assert code == 0, err
    assert out == ""
    assert summary(err)["tried"] == "30"
    assert wall >= 29 / 40


# --- scans of real servers ------------------------------------------------------------


def test_finds_exactly_the_tls_endpoint(
    env: Path, chain: Chain, capsys: pytest.CaptureFixture[str]
) -> None:
    """Of a TLS server, a plaintext HTTP listener and a closed port, only the TLS one is
    reported, as ``host:port # subject, expires date``."""
    tls = TcpServer(tls_handler(server_context(chain)))
    plain = http_server()
    closed = closed_port()
    try:
        ports = f"{tls.port},{plain.port},{closed}"
        code, out, err = run_cli(["discover", "127.0.0.1", "--ports", ports], capsys)
    finally:
        tls.close()
        plain.close()
    assert code == 0, err
    assert out == f"127.0.0.1:{tls.port} # CN=localhost, expires {expires(chain)}\n"
    fields = summary(err)
    assert (fields["addresses"], fields["ports"], fields["tried"]) == ("1", "3", "3")
    assert (fields["open"], fields["certs"]) == ("2", "1")
    assert "outside" not in fields
    assert "\r" not in err  # no progress line: stderr is not a terminal here


def test_scan_of_a_slash_29_finds_both_servers(
    env: Path, chain: Chain, capsys: pytest.CaptureFixture[str]
) -> None:
    """TLS servers on 127.0.0.2 and 127.0.0.3 are found in a scan of 127.0.0.0/29, sorted;
    the broadcast address 127.0.0.7 is never contacted."""
    hosts = ["127.0.0.3", "127.0.0.2", "127.0.0.7"]
    others = ("127.0.0.1", "127.0.0.4", "127.0.0.5", "127.0.0.6")
    with same_port(tls_handler(server_context(chain)), hosts, closed=others) as servers:
        port = servers[0].port
        code, out, err = run_cli(["discover", "127.0.0.0/29", "--ports", str(port)], capsys)
        broadcast = servers[2]
        assert broadcast.accepted_before_now() == 0
    assert code == 0, err
    assert out.splitlines() == [
        f"127.0.0.2:{port} # CN=localhost, expires {expires(chain)}",
        f"127.0.0.3:{port} # CN=localhost, expires {expires(chain)}",
    ]
    fields = summary(err)
    assert (fields["addresses"], fields["tried"], fields["certs"]) == ("6", "6", "2")


def test_starttls_server_on_a_well_known_port_is_reported_with_its_scheme(
    env: Path, chain: Chain, capsys: pytest.CaptureFixture[str]
) -> None:
    """An NNTP server with STARTTLS on the well-known 119 is found as ``nntp://``."""
    # 119 of one loopback address, another one's when a second run of the suite holds it.
    hosts = ["127.0.0.9", *(f"127.1.{n // 250}.{n % 250 + 1}" for n in range(20))]
    for host in hosts:
        try:
            server = nntp_server(chain, host=host, port=119)
            break
        except PermissionError:
            need_root("only root binds the well-known port 119")
            raise
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    else:
        pytest.fail(f"119 is taken on {hosts[0]} to {hosts[-1]} (an NNTP server on *:119?)")
    try:
        ports = f"119,{closed_port()}"
        code, out, err = run_cli(["discover", host, "--ports", ports], capsys)
    finally:
        server.close()
    assert code == 0, err
    assert out == f"nntp://{host}:119 # CN=localhost, expires {expires(chain)}\n"


def test_servers_outside_trackssl_allow_see_no_connection(
    env: Path, chain: Chain, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With TRACKSSL_ALLOW narrower than the scan, the server outside it is never connected
    to, and the summary counts the addresses left out."""
    monkeypatch.setenv("TRACKSSL_ALLOW", "127.0.0.2/32")
    with same_port(tls_handler(server_context(chain)), ["127.0.0.2", "127.0.0.3"]) as servers:
        inside, outside = servers
        code, out, err = run_cli(["discover", "127.0.0.0/29", "--ports", str(inside.port)], capsys)
        assert outside.accepted_before_now() == 0
        assert inside.accepted_before_now() == 1
    assert code == 0, err
    assert out.splitlines() == [f"127.0.0.2:{inside.port} # CN=localhost, expires {expires(chain)}"]
    fields = summary(err)
    assert (fields["addresses"], fields["tried"], fields["outside"]) == ("6", "1", "5")


def test_written_targets_file_is_probed_by_check_once(
    env: Path, chain: Chain, capsys: pytest.CaptureFixture[str]
) -> None:
    """The --output file, fed to ``check-once --targets``, probes every endpoint found."""
    out_file = env / "found.txt"
    with same_port(tls_handler(server_context(chain)), ["127.0.0.2", "127.0.0.3"]) as servers:
        ports = f"{servers[0].port},{closed_port()}"
        code, out, err = run_cli(
            ["discover", "127.0.0.2/31", "--ports", ports, "--output", str(out_file)], capsys
        )
        assert (code, out) == (0, ""), err
        written = out_file.read_text().splitlines()
        assert len(written) == 2
        code, out, err = run_cli(["check-once", "--targets", str(out_file), "--json"], capsys)
    assert code == 0, err
    results = json.loads(out)
    assert [r["target"] for r in results] == [line.split(" #")[0] for line in written]
    assert all(r["ok"] for r in results)
    assert {r["certificate"]["sha256"] for r in results} == {
        hashlib.sha256(chain.ders[0]).hexdigest()
    }


def test_ipv6_loopback_is_scanned_and_bracketed(
    env: Path, chain: Chain, capsys: pytest.CaptureFixture[str]
) -> None:
    """A scan of ::1/128 finds a TLS server on ::1, written ``[::1]:port``; --json gives
    the probe JSON of it."""
    server = TcpServer(tls_handler(server_context(chain)), host="::1")
    try:
        args = ["discover", "::1/128", "--ports", str(server.port)]
        code, out, err = run_cli(args, capsys)
        json_code, json_out, _err = run_cli([*args, "--json"], capsys)
    finally:
        server.close()
    assert code == 0, err
    assert out == f"[::1]:{server.port} # CN=localhost, expires {expires(chain)}\n"
    assert json_code == 0
    (result,) = json.loads(json_out)
    assert (result["target"], result["address"], result["ok"]) == (
        f"[::1]:{server.port}", "::1", True,
    )  # fmt: skip
    assert result["certificate"]["not_after"] == chain.leaf.not_valid_after_utc.strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )


def test_host_name_is_scanned_by_its_addresses(
    env: Path, chain: Chain, capsys: pytest.CaptureFixture[str]
) -> None:
    """``localhost`` with -4 is scanned at its IPv4 address, reported by address."""
    server = TcpServer(tls_handler(server_context(chain)))
    try:
        code, out, err = run_cli(
            ["discover", "-4", "localhost", "--ports", str(server.port)], capsys
        )
    finally:
        server.close()
    assert code == 0, err
    assert out.startswith(f"127.0.0.1:{server.port} # CN=localhost")


def test_output_replaces_the_file_atomically(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--output replaces an existing file whole (mode 0644), leaves no temporary file."""
    out_file = env / "found.txt"
    out_file.write_text("old contents\n")
    out_file.chmod(0o640)
    code, out, err = run_cli(
        ["discover", "127.0.0.12", "--ports", str(closed_port()), "--output", str(out_file)], capsys
    )
    assert (code, out) == (0, ""), err
    assert out_file.read_text() == ""
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o644
    assert sorted(p.name for p in env.iterdir()) == ["found.txt", "work"]


def test_progress_shows_on_a_terminal_only(env: Path) -> None:
    """With stderr on a terminal ``done/total`` is shown before the summary; the summary is
    the last line and nothing else is written."""
    args = [sys.executable, "-m", "trackssl_agent", "discover", "127.0.0.14", "--ports"]
    args.append(closed_ports(10))
    child_env = agent_environ(PYTHONPATH=str(ROOT))
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, env=child_env, cwd=env, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    seen = b""
    with contextlib.suppress(OSError):  # EIO once the child closed the terminal
        while chunk := os.read(master, 4096):
            seen += chunk
    assert proc.wait(30) == 0
    os.close(master)
    text = seen.decode()
    assert "\r10/10\r\n" in text  # the terminal turns the line's end into CR LF
    assert summary(text.replace("\r", ""))["tried"] == "10"
    piped = subprocess.run(
        args, env=child_env, cwd=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert piped.returncode == 0
    assert "/10" not in piped.stderr
    assert summary(piped.stderr)["tried"] == "10"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["127.0.0.0/15", "--ports", "443"], "more than the 65,536 allowed"),
        (["127.0.0.0/16", "--ports", "1-17"], "more than 1,048,576"),
        (["127.0.0.1", "--ports", "0"], "outside 1-65535"),
        (["-4", "::1"], "-4 given but ::1 is an IPv6 address; drop -4 to scan it"),
        (["-4", "-6", "127.0.0.1"], "-4 and -6 exclude each other"),
        (["127.0.0.1", "--rate", "0"], "--rate"),
        (["127.0.0.1", "--output", "/nonexistent-folder/x.txt"], "does not exist"),
        (["not a host"], "not a host"),
    ],
)
def test_usage_errors_exit_3_before_any_connection(
    env: Path, capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    """Bad arguments and scans beyond the limits are usage errors: exit 3, one line."""
    code, out, err = run_cli(["discover", *args], capsys)
    assert code == 3
    assert out == ""
    assert says in err
    assert not SUMMARY.search(err)


# --- streaming: nothing listed, nothing kept but the output, each endpoint once -------

MEMORY_BOUND_KIB = 64 * 1024
"""The peak RSS docs/commands.md promises for a scan, whatever the ranges: measured at about
25 MiB on Linux (CPython 3.11), so this is a correctness bound with room, not a timing."""


def test_plan_of_huge_ranges_lists_only_the_allowed_addresses() -> None:
    """0.0.0.0/0 and ::/0 under a one-address TRACKSSL_ALLOW plan one address and count the
    rest: the limits apply to what will be contacted, so no usage error."""
    allowed = allow.parse("127.0.0.1/32")
    scan = plan(["0.0.0.0/0", "::/0"], [443, 636], allow=allowed, resolver=_no_lookup)
    assert [str(a) for a in scan.addresses] == ["127.0.0.1"]
    assert scan.pairs == 2
    # Every IPv4 address but 0.0.0.0 and 255.255.255.255, and every IPv6 one but the
    # IPv4-mapped block, which names those same IPv4 hosts: each host counted once.
    assert scan.total_addresses == (2**32 - 2) + (2**128 - 2**32)
    assert scan.outside == scan.total_addresses - 1


def test_limits_count_the_addresses_inside_the_allow_list() -> None:
    """A /8 with 17 ports is refused without TRACKSSL_ALLOW, but planned when the allow
    list leaves a /24 of it; --max-pairs counts the allowed pairs only."""
    ports = list(range(1, 18))
    with pytest.raises(UsageError, match="more than the 65,536 allowed"):
        plan(["127.0.0.0/8"], ports, resolver=_no_lookup)
    allowed = allow.parse("127.0.5.0/24")
    scan = plan(["127.0.0.0/8"], ports, allow=allowed, resolver=_no_lookup)
    assert (scan.addresses.count, scan.pairs) == (256, 256 * 17)
    assert scan.outside == 2**24 - 2 - 256
    exact = plan(["127.0.0.0/8"], ports, allow=allowed, max_pairs=256 * 17, resolver=_no_lookup)
    assert exact.pairs == 256 * 17
    with pytest.raises(UsageError, match="holds 256 addresses inside TRACKSSL_ALLOW"):
        plan(["127.0.0.0/8"], ports, allow=allowed, max_pairs=256 * 17 - 1, resolver=_no_lookup)
    with pytest.raises(UsageError, match="holds 65,536 addresses inside TRACKSSL_ALLOW"):
        plan(["127.0.0.0/8"], [1], allow=allow.parse("127.9.0.0/16"), max_pairs=65_535,
             resolver=_no_lookup)  # fmt: skip


def test_ipv4_mapped_spellings_are_their_ipv4_addresses() -> None:
    """``::ffff:127.0.0.1`` is 127.0.0.1, and ``::ffff:127.0.0.0/125`` is 127.0.0.0/29:
    each host once, whichever way it is written; -6 refuses them, -4 takes them."""
    scan = plan(
        ["127.0.0.1", "::ffff:127.0.0.1", "[::ffff:127.0.0.2]", "::ffff:127.0.0.0/125"],
        [443], resolver=_no_lookup,
    )  # fmt: skip
    assert [str(a) for a in scan.addresses] == [f"127.0.0.{n}" for n in range(1, 7)]
    assert scan.outside == 0
    only_v4 = plan(["::ffff:127.0.0.9"], [443], family=socket.AF_INET, resolver=_no_lookup)
    assert [str(a) for a in only_v4.addresses] == ["127.0.0.9"]
    with pytest.raises(
        UsageError, match=r"-6 given but ::ffff:127.0.0.9 \(IPv4-mapped\) is an IPv4"
    ):
        plan(["::ffff:127.0.0.9"], [443], family=socket.AF_INET6, resolver=_no_lookup)


@pytest.mark.parametrize(
    "networks",
    [["127.0.0.0/8"], ["::/0", "0.0.0.0/0", "--max-pairs", "1" + "0" * 42]],
    ids=["slash-8", "everything"],
)
def test_scan_of_huge_ranges_is_bounded_in_memory(env: Path, networks: list[str]) -> None:
    """A real ``discover`` over a /8, or over ::/0 and 0.0.0.0/0 with --max-pairs 10**42,
    under a one-address TRACKSSL_ALLOW: it tries that one address, exits 0, and its peak
    RSS stays under the documented bound (the plan is never listed)."""
    if not Path("/proc/self/status").exists():
        pytest.skip("peak RSS is read from /proc (Linux)")
    port = closed_port()
    child = child_env(env / "state", TRACKSSL_ALLOW="127.0.0.1/32")
    proc, peak_kib = run_agent_measured(
        ["discover", *networks, "--ports", str(port)], env=child, cwd=env / "work", timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    fields = summary(proc.stderr)
    assert (fields["tried"], fields["ports"]) == ("1", "1")
    assert int(fields["outside"].replace(",", "")) >= 2**24 - 3
    assert peak_kib < MEMORY_BOUND_KIB, f"peak RSS {peak_kib} KiB"


def test_endpoints_found_keep_their_line_not_their_chain(env: Path) -> None:
    """400 endpoints presenting 96 KB chains (about the most OpenSSL takes; 38 MB in all)
    are all listed, while the real ``discover`` process stays under the documented bound:
    of each endpoint only its output line is kept."""
    if not Path("/proc/self/status").exists():
        pytest.skip("peak RSS is read from /proc (Linux)")
    key = new_key("ec")
    names = tuple(f"h{n:05}.department.corp.example" for n in range(3000))
    chain = (der(make_cert(cn="big-chain", key=key)), der(make_cert(cn="ca", key=key, sans=names)))
    assert len(b"".join(chain)) > 90_000
    servers: list[TcpServer] = []
    try:
        servers += [raw_tls12_server(chain) for _ in range(400)]
        ports = ",".join(str(s.port) for s in servers)
        child = child_env(env / "state")
        args = ["discover", "127.0.0.1", "--ports", ports, "--concurrency", "2", "--rate", "5000"]
        proc, peak_kib = run_agent_measured(args, env=child, cwd=env / "work", timeout=120)
    finally:
        for server in servers:
            server.close()
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 400
    assert all(" # CN=big-chain, expires " in line for line in lines)
    assert summary(proc.stderr)["certs"] == "400"
    assert peak_kib < MEMORY_BOUND_KIB, f"peak RSS {peak_kib} KiB"


def test_one_endpoint_spelled_two_ways_is_contacted_once(env: Path, chain: Chain) -> None:
    """``discover 127.0.0.1 ::ffff:127.0.0.1`` (a real process) connects once to the one
    TLS server there and lists it once."""
    server = TcpServer(tls_handler(server_context(chain)))
    try:
        args = ["discover", "127.0.0.1", "::ffff:127.0.0.1", "--ports", str(server.port)]
        proc = run_agent(args, env=child_env(env / "state"), cwd=env / "work")
        time.sleep(0.2)  # let the accept thread record anything that arrived
        connections = len(server.connections)
    finally:
        server.close()
    assert proc.returncode == 0, proc.stderr
    assert connections == 1
    assert proc.stdout == f"127.0.0.1:{server.port} # CN=localhost, expires {expires(chain)}\n"
    fields = summary(proc.stderr)
    assert (fields["addresses"], fields["tried"]) == ("1", "1")


def test_long_subject_keeps_the_line_within_the_targets_file_limit() -> None:
    """A 5,000-character subject is cut in the comment: the line stays far below the
    4,096-byte limit of a targets-file line, and reads back as the endpoint alone."""
    key = new_key("ec")
    units = [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "u" * 60) for _ in range(80)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(units)).issuer_name(x509.Name(units))
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(datetime(2026, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2031, 5, 6, tzinfo=UTC))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    address = plan(["127.0.0.1"], [443], resolver=_no_lookup).addresses[0]
    result = ProbeResult(
        target=endpoint_target(address, 443), servername=None, address="127.0.0.1",
        probed_at=datetime.now(UTC), elapsed_ms=1.0, chain=(der(cert),),
    )  # fmt: skip
    line = targets_line(result)
    assert len(line.encode()) < 300
    assert line.startswith("127.0.0.1:443 # OU=uuu")
    assert line.endswith("u..., expires 2031-05-06\n")
    parsed = read_targets_file([line], source="found.txt", starttls=protocols.AUTO)
    assert [t.text for t in parsed] == ["127.0.0.1:443"]


def test_json_entries_join_into_the_probe_json_array(chain: Chain) -> None:
    """The kept JSON entries join into exactly what ``json.dumps`` of the results' objects
    prints (the probe JSON array), for none, one and two endpoints."""
    now = datetime.now(UTC)
    address = plan(["127.0.0.1"], [443], resolver=_no_lookup).addresses[0]
    results = [
        ProbeResult(
            target=endpoint_target(address, port),
            servername=None,
            address="127.0.0.1",
            probed_at=now,
            elapsed_ms=1.0,
            chain=tuple(chain.ders),
        )
        for port in (443, 636)
    ]
    for found in ([], results[:1], results):
        expected = json.dumps([output.result_json(r, now) for r in found], indent=2) + "\n"
        assert render_json([json_entry(now)(r) for r in found]) == expected


def test_targets_file_comment_says_expired_for_a_past_date() -> None:
    """A leaf whose date passed before the probe reads "expired", never "expires"."""
    cert = make_cert(
        cn="old", key=new_key("ec"), not_before=datetime(2019, 1, 1, tzinfo=UTC),
        not_after=datetime(2020, 5, 6, tzinfo=UTC),
    )  # fmt: skip
    address = plan(["127.0.0.1"], [443], resolver=_no_lookup).addresses[0]
    result = ProbeResult(
        target=endpoint_target(address, 443), servername=None, address="127.0.0.1",
        probed_at=datetime.now(UTC), elapsed_ms=1.0, chain=(der(cert),),
    )  # fmt: skip
    assert targets_line(result) == "127.0.0.1:443 # CN=old, expired 2020-05-06\n"
