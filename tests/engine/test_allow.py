"""TRACKSSL_ALLOW: networks admit addresses, globs admit host names only, and a glob that
admits every name is refused; checked on ``allow`` itself and through real
``check-once --targets`` processes against loopback servers.

Non-loopback addresses appear only as strings that are parsed, never dialled.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.certs import Chain
from tests.child_process import child_env, run_agent
from tests.tls_servers import TcpServer, server_context, tls_server
from trackssl_agent.engine import allow
from trackssl_agent.engine.targets import parse_target


def allows(spec: str, target: str, address: str) -> bool:
    """Whether TRACKSSL_ALLOW=``spec`` lets ``target`` be contacted at ``address``."""
    allow_list = allow.parse(spec)
    assert allow_list is not None
    return allow_list(parse_target(target), address)


@pytest.mark.parametrize(
    ("spec", "target", "address"),
    [
        ("127.0.0.1/32,*ff*", "[::ffff:127.0.0.2]:443", "::ffff:127.0.0.2"),
        ("f*", "[fe80::1]:443", "fe80::1"),
        ("f*", "fe80::1%eth0", "fe80::1%eth0"),
        ("fd*", "[fd00::5]:636", "fd00::5"),
        ("*x*", "0x7f000001:443", "127.0.0.1"),
        ("0x*", "0x7f.1:443", "127.0.0.1"),
    ],
)
def test_glob_never_admits_an_ip_literal(spec: str, target: str, address: str) -> None:
    """A glob that the text of an IP literal matches (IPv6, IPv4-mapped, scoped, or a
    numeric form the resolver reads as IPv4) does not admit it: only a network would."""
    assert not allows(spec, target, address)


def test_glob_still_admits_host_names() -> None:
    """Globs keep admitting the names they match, case and trailing dot aside."""
    assert allows("*ff*", "staff.corp.example:443", "192.0.2.10")
    assert allows("*.corp.example", "LDAP.Corp.Example.:636", "192.0.2.11")
    assert allows("db?.corp.example", "db1.corp.example", "2001:db8::1")
    assert not allows("*.corp.example", "corp.example.org", "192.0.2.12")


def test_name_admitted_by_a_glob_is_contacted_at_every_address() -> None:
    """A name a glob admits may be contacted at whatever its DNS answers (documented: the
    customer's DNS decides), while the same address as a literal is refused."""
    assert allows("*.corp.example", "printer.corp.example", "192.0.2.99")
    assert not allows("*.corp.example", "192.0.2.99", "192.0.2.99")


def test_ipv4_mapped_address_is_checked_as_ipv4() -> None:
    """``::ffff:a.b.c.d`` is let in exactly when a.b.c.d is; an allow-list network written
    IPv4-mapped means its IPv4 network."""
    assert allows("127.0.0.1/32", "[::ffff:127.0.0.1]:443", "::ffff:127.0.0.1")
    assert not allows("127.0.0.1/32", "[::ffff:127.0.0.2]:443", "::ffff:127.0.0.2")
    assert allows("::ffff:10.0.0.0/104", "10.9.8.7", "10.9.8.7")
    assert allows("::ffff:10.0.0.0/104", "[::ffff:10.9.8.7]", "::ffff:10.9.8.7")
    assert not allows("::ffff:10.0.0.0/104", "11.0.0.1", "11.0.0.1")
    assert allows("fe80::/10", "fe80::1%eth0", "fe80::1%eth0")


@pytest.mark.parametrize("glob", ["*", "?*", "*.*", "**", "?", "*.", ".*", "*.?*", "???"])
def test_glob_of_wildcards_only_is_refused(glob: str) -> None:
    """A glob of nothing but wildcards and dots admits (nearly) every name: refused, with
    the entry named."""
    with pytest.raises(ValueError, match="matches every host name") as info:
        allow.parse(f"10.0.0.0/8,{glob}")
    assert repr(glob) in str(info.value)


@pytest.mark.parametrize("glob", ["*.corp.example", "db?", "*-prod", "a*", "*_*"])
def test_glob_with_a_fixed_character_is_accepted(glob: str) -> None:
    """A glob with at least one letter, digit, '-' or '_' is a host-name glob."""
    allow_list = allow.parse(glob)
    assert allow_list is not None
    assert allow_list.globs == (glob,)


# --- real processes ---------------------------------------------------------------------


def test_ipv4_mapped_literal_a_glob_matches_is_denied(env: Path, chain: Chain) -> None:
    """``check-once --targets`` with ``[::ffff:127.0.0.2]:PORT`` under ``127.0.0.1/32,*ff*``
    reports it denied and the server on 127.0.0.2 sees no connection; under
    ``127.0.0.2/32`` the same target is probed."""
    server = tls_server(server_context(chain), host="127.0.0.2")
    targets = env / "targets.txt"
    targets.write_text(f"[::ffff:127.0.0.2]:{server.port}\n")
    args = ["check-once", "--targets", str(targets), "--json", "--timeout", "5"]
    try:
        denied = run_agent(
            args, env=child_env(env / "state", TRACKSSL_ALLOW="127.0.0.1/32,*ff*"), cwd=env / "work"
        )
        time.sleep(0.2)  # let the accept thread record anything that arrived
        assert server.connections == []
        admitted = run_agent(
            args, env=child_env(env / "state", TRACKSSL_ALLOW="127.0.0.2/32"), cwd=env / "work"
        )
    finally:
        server.close()
    (result,) = json.loads(denied.stdout)
    assert denied.returncode == 2, denied.stderr
    assert result["error"]["kind"] == "denied"
    assert result["address"] is None
    assert admitted.returncode == 0, admitted.stderr
    assert json.loads(admitted.stdout)[0]["ok"] is True


def test_check_once_targets_denies_literals_globs_match(env: Path, chain: Chain) -> None:
    """``check-once --targets`` under ``127.0.0.1/32,*ff*,f*``: the IPv4-mapped literal and
    ``fe80::1`` are denied (never contacted), 127.0.0.1 is probed."""
    good = tls_server(server_context(chain))
    other = TcpServer(lambda conn: None, host="127.0.0.2")
    targets = env / "targets.txt"
    targets.write_text(
        f"127.0.0.1:{good.port}\n[::ffff:127.0.0.2]:{other.port}\n[fe80::1]:{other.port}\n"
    )
    try:
        proc = run_agent(
            ["check-once", "--targets", str(targets), "--json", "--timeout", "5"],
            env=child_env(env / "state", TRACKSSL_ALLOW="127.0.0.1/32,*ff*,f*"),
            cwd=env / "work",
        )
        time.sleep(0.2)
        assert other.connections == []
    finally:
        good.close()
        other.close()
    results = json.loads(proc.stdout)
    assert [r["ok"] for r in results] == [True, False, False]
    assert [r["error"]["kind"] for r in results[1:]] == ["denied", "denied"]


@pytest.mark.parametrize("glob", ["?*", "*"])
def test_glob_matching_everything_is_exit_3(env: Path, glob: str) -> None:
    """TRACKSSL_ALLOW with a glob that matches every name: ``check-once --targets`` exits 3
    before anything is contacted, one line naming TRACKSSL_ALLOW and the entry."""
    targets = env / "targets.txt"
    targets.write_text("127.0.0.1:1\n")
    proc = run_agent(
        ["check-once", "--targets", str(targets), "--timeout", "2"],
        env=child_env(env / "state", TRACKSSL_ALLOW=f"127.0.0.1/32,{glob}"), cwd=env / "work",
    )  # fmt: skip
    assert proc.returncode == 3
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "TRACKSSL_ALLOW" in lines[0]
    assert f"{glob!r} matches every host name" in lines[0]
