"""TRACKSSL_ALLOW: which targets the agent may contact, whatever the cloud asks for.

An address may be contacted when it lies in one of the listed networks, or when the
target's host *name* matches one of the listed globs: the customer named that host, and
its DNS decides the addresses. An IP literal (``10.1.2.3``, ``::ffff:10.1.2.3``,
``fe80::1%eth0``, or a numeric form the resolver reads as one, such as ``0x7f000001``) is
never matched by a glob: only a network that contains it lets it in.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import socket
from dataclasses import dataclass

from trackssl_agent.engine.targets import Target

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
"""IPv4-mapped IPv6 addresses: an IPv4 host written as IPv6, checked as its IPv4 address."""

_GLOB = re.compile(r"^[A-Za-z0-9*?._-]+$")
_NUMERIC_LABEL = re.compile(r"^[0-9*?\[\]!-]+$")
_OCTET = re.compile(r"^[0-9]{1,3}$")
_WILDCARDS_ONLY = re.compile(r"^[*?.]+$")


@dataclass(frozen=True)
class AllowList:
    """Networks and host-name globs; called as ``allow(target, address)``."""

    networks: tuple[Network, ...]
    globs: tuple[str, ...]
    """Lowercase fnmatch patterns over the target's host name."""

    def __call__(self, target: Target, address: str) -> bool:
        """True when ``address`` (resolved for ``target``) may be contacted."""
        if self.admits_name(target.host):
            return True
        ip = ip_literal(address)
        return ip is not None and self.contains(ip)

    def admits_name(self, host: str) -> bool:
        """True when a glob matches ``host`` as a host name: never for an IP literal,
        whose address only a network may admit."""
        name = host.lower().rstrip(".")
        if ip_literal(name) is not None:
            return False
        return any(fnmatch.fnmatchcase(name, glob) for glob in self.globs)

    def contains(self, ip: Address) -> bool:
        """True when one of the networks holds ``ip`` (an IPv4-mapped one as IPv4)."""
        ip = unmapped(ip)
        return any(ip in network for network in self.networks if network.version == ip.version)

    def __str__(self) -> str:
        return ",".join([*(str(n) for n in self.networks), *self.globs])


def parse(text: str) -> AllowList | None:
    """Parse a comma (or space) separated list; None when empty (everything allowed).

    Raises ValueError naming the first bad entry.
    """
    networks: list[Network] = []
    globs: list[str] = []
    for entry in re.split(r"[,\s]+", text.strip()):
        if not entry:
            continue
        try:
            network = ipaddress.ip_network(entry.strip("[]"), strict=False)
            networks.append(_unmapped_network(network))
            continue
        except ValueError:
            pass
        address_pattern = _address_pattern(entry)
        if address_pattern is not None:
            raise ValueError(address_pattern)
        if "/" in entry or ":" in entry or not _GLOB.match(entry):
            raise ValueError(f"{entry!r} is neither a CIDR such as 10.0.0.0/8 nor a host glob")
        if _WILDCARDS_ONLY.match(entry):
            raise ValueError(
                f"{entry!r} matches every host name, which would let the cloud ask for anything; "
                "name your domains (*.corp.example) or networks (10.0.0.0/8)"
            )
        globs.append(entry.lower().rstrip("."))
    if not networks and not globs:
        return None
    return AllowList(tuple(networks), tuple(globs))


def ip_literal(text: str) -> Address | None:
    """The address ``text`` writes, or None for a host name: an IPv4 or IPv6 literal
    (brackets and a ``%scope`` allowed, IPv4-mapped given as IPv4), or a numeric form the
    system resolver reads as IPv4 (``2130706433``, ``0x7f.1``: ``inet_aton``'s)."""
    inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return unmapped(ipaddress.ip_address(inner.split("%", 1)[0]))
    except ValueError:
        pass
    if not inner.isascii() or not inner[:1].isdigit():
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(inner))
    except (OSError, ValueError):
        return None


def unmapped(ip: Address) -> Address:
    """``ip``, or the IPv4 address an IPv4-mapped IPv6 address stands for."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _unmapped_network(network: Network) -> Network:
    """``network``, or the IPv4 network it maps when it lies within ``::ffff:0:0/96``:
    ``::ffff:10.0.0.0/104`` means 10.0.0.0/8, as its addresses are checked as IPv4."""
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(MAPPED):
        first = network.network_address.ipv4_mapped
        assert first is not None  # within MAPPED
        return ipaddress.IPv4Network((first, network.prefixlen - 96))
    return network


def _address_pattern(entry: str) -> str | None:
    """Why ``entry`` is refused when it is an address written as a glob (``10.*``,
    ``192.168.*.*``), or None.

    Globs match the host *name*: ``10.*`` would allow ``10.attacker.example`` whatever
    it resolves to. No real host name ends in an all-numeric label, so a pattern made
    only of digits and wildcards is an address range, and the CIDR to write is shown.
    """
    labels = entry.rstrip(".").split(".")
    if not any(char in entry for char in "*?[") or not any(c.isdigit() for c in entry):
        return None
    if not all(_NUMERIC_LABEL.match(label) for label in labels):
        return None
    octets: list[int] = []
    for label in labels:
        if not _OCTET.match(label) or int(label) > 255:
            break
        octets.append(int(label))
    rest = labels[len(octets) :]
    if octets and rest and len(labels) <= 4 and all(label == "*" for label in rest):
        network = ".".join(str(o) for o in octets + [0] * (4 - len(octets)))
        return (
            f"{entry!r} is an address pattern, but globs match host names; "
            f"write the network as {network}/{8 * len(octets)}"
        )
    return (
        f"{entry!r} is an address pattern, but globs match host names; "
        "write the networks as CIDRs such as 10.0.0.0/8"
    )
