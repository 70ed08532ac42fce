"""What ``discover`` scans: NETWORK arguments -> addresses, ``--ports`` -> ports, the limits
and TRACKSSL_ALLOW applied before anything is contacted. The scan itself is
``discover_scan``.

Nothing here touches the network except a host name's lookup.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from trackssl_agent import probe, protocols
from trackssl_agent.errors import UsageError
from trackssl_agent.results import ProbeError
from trackssl_agent.targets import Target, parse_target
from trackssl_agent.transport import Deadline

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Allow = Callable[[Target, str], bool]

MAX_ADDRESSES = 65_536
"""More addresses than this (a /16) is a usage error unless ``--max-pairs`` is given."""
MAX_PAIRS = 1_048_576
"""More address x port pairs than this is a usage error unless ``--max-pairs`` raises it."""

EXTRA_PORTS = (8443,)
"""Direct-TLS ports scanned by default on top of the protocol tables: 8443 is the usual
second HTTPS port and has no scheme of its own."""


def default_ports() -> tuple[int, ...]:
    """Every port of the direct-TLS schemes and of the STARTTLS table, plus 8443: derived
    from ``protocols`` so that a protocol added there is scanned too."""
    direct = (port for port in protocols.DIRECT_SCHEMES.values() if port is not None)
    return tuple(sorted({*direct, *protocols.PORTS, *EXTRA_PORTS}))


def parse_ports(text: str) -> tuple[int, ...]:
    """``--ports``: a comma list of ports and ranges (``443,636,8000-8443``), sorted and
    without repeats; UsageError quoting the first bad item."""
    ports: set[int] = set()
    for raw in text.split(","):
        item = raw.strip()
        low_text, dash, high_text = item.partition("-")
        low = _port(low_text, item)
        high = _port(high_text, item) if dash else low
        if high < low:
            raise UsageError(f"--ports: range {item!r} ends before it starts; write LOW-HIGH")
        ports.update(range(low, high + 1))
    return tuple(sorted(ports))


def _port(text: str, item: str) -> int:
    text = text.strip()
    if not text.isascii() or not text.isdigit():
        raise UsageError(
            f"--ports: {item!r} is not a port or a range; write e.g. 443,636,8000-8443"
        )
    port = int(text)
    if not 1 <= port <= 65535:
        raise UsageError(f"--ports: port {port} is outside 1-65535")
    return port


@dataclass(frozen=True)
class Plan:
    """What a scan will contact: decided before the first connection."""

    addresses: tuple[Address, ...]
    """The addresses to contact, sorted (IPv4 first), each once."""
    ports: tuple[int, ...]
    outside: int
    """Addresses of the NETWORK arguments that TRACKSSL_ALLOW leaves out: never contacted."""

    @property
    def total_addresses(self) -> int:
        """Every address the arguments name, those outside TRACKSSL_ALLOW included."""
        return len(self.addresses) + self.outside

    @property
    def pairs(self) -> int:
        """Address x port pairs to try."""
        return len(self.addresses) * len(self.ports)


Resolver = Callable[[str, int], list[Address]]
"""``(host name, address family) -> addresses``; UsageError when the name has none."""


def make_resolver(
    *, timeout: float, getaddrinfo: Callable[..., list[probe.AddrInfo]] = socket.getaddrinfo
) -> Resolver:
    """A resolver using the probe engine's lookup (bounded by ``timeout``); ``getaddrinfo``
    is injectable as it is for ``probe.probe``."""

    def resolve(name: str, family: int) -> list[Address]:
        target = parse_target(name)
        found = probe.resolve(target, family, Deadline(timeout), getaddrinfo)
        if isinstance(found, ProbeError):
            raise UsageError(found.message)
        return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in found]

    return resolve


def plan(
    networks: Sequence[str],
    ports: Sequence[int],
    *,
    family: int = socket.AF_UNSPEC,
    allow: Allow | None = None,
    max_pairs: int | None = None,
    resolver: Resolver,
) -> Plan:
    """Expand NETWORK arguments into the addresses to contact; UsageError (exit 3) for a bad
    argument or a scan beyond the limits, before anything is contacted.

    Without ``max_pairs``: at most ``MAX_ADDRESSES`` addresses and ``MAX_PAIRS`` pairs;
    with it, at most ``max_pairs`` pairs and nothing else.
    """
    if not ports:
        raise UsageError("--ports names no port")
    address_limit = MAX_ADDRESSES if max_pairs is None else max(max_pairs // len(ports), 1)
    chosen: set[Address] = set()
    outside: set[Address] = set()
    for text in networks:
        name, addresses = _expand(text, family, resolver, address_limit, max_pairs)
        check = _checker(name, allow)
        for address in addresses:
            (chosen if check(address) else outside).add(address)
        outside -= chosen  # let in by one argument's name glob, though not by another's
        if len(chosen) + len(outside) > address_limit:
            count = len(chosen) + len(outside)
            raise _too_many_addresses("the networks hold", count, address_limit, max_pairs)
    pair_limit = MAX_PAIRS if max_pairs is None else max_pairs
    total = len(chosen) + len(outside)
    pairs = total * len(ports)
    if pairs > pair_limit:
        raise UsageError(
            f"discover: {total:,} addresses x {len(ports):,} ports is "
            f"{pairs:,} pairs, more than {pair_limit:,}; narrow NETWORK or --ports, or raise "
            "the limit with --max-pairs N"
        )
    ordered = tuple(sorted(chosen, key=address_key))
    return Plan(addresses=ordered, ports=tuple(ports), outside=len(outside))


def address_key(address: Address) -> tuple[int, int]:
    """Sort key: IPv4 before IPv6, then numeric order."""
    return address.version, int(address)


def _too_many_addresses(where: str, count: int, limit: int, max_pairs: int | None) -> UsageError:
    """The usage error for more addresses than ``limit``; ``where`` says whose they are."""
    how = (
        "raise --max-pairs"
        if max_pairs is not None
        else "allow more with --max-pairs N (address x port pairs)"
    )
    return UsageError(
        f"discover: {where} {count:,} addresses, more than the {limit:,} allowed; "
        f"narrow NETWORK, or {how}"
    )


def _checker(name: str | None, allow: Allow | None) -> Callable[[Address], bool]:
    """Whether TRACKSSL_ALLOW lets the scan contact an address of one argument: a host name
    argument matches the globs by that name, as ``check-once`` does for a target."""
    if allow is None:
        return lambda _address: True
    allow_list = allow
    if name is not None:
        named = Target(text=name, host=name, port=443, starttls=None, is_ip=False)
        return lambda address: allow_list(named, str(address))

    def check(address: Address) -> bool:
        shown = str(address)
        return allow_list(Target(shown, shown, 443, None, is_ip=True), shown)

    return check


def _expand(
    text: str, family: int, resolver: Resolver, limit: int, max_pairs: int | None
) -> tuple[str | None, Iterator[Address]]:
    """``(host name or None, addresses)`` of one NETWORK argument; UsageError when it is
    none of a CIDR, an address or a host name, or holds more than ``limit`` addresses."""
    network = _network(text)
    if network is None:
        if "/" in text or ":" in text:
            raise UsageError(
                f"discover: {text!r} is not a network (10.1.0.0/24, fd00::/120), "
                "an address or a host name"
            )
        try:
            addresses = resolver(text, family)
        except UsageError as exc:
            raise UsageError(f"discover: {text!r}: {exc}") from None
        return text, iter(addresses)
    wanted = {socket.AF_INET: 4, socket.AF_INET6: 6}.get(socket.AddressFamily(family))
    if wanted is not None and network.version != wanted:
        raise UsageError(
            f"discover: {text} is an IPv{network.version} network, but -{wanted} asks for "
            f"IPv{wanted} only"
        )
    if host_count(network) > limit:
        raise _too_many_addresses(f"{text} holds", host_count(network), limit, max_pairs)
    return None, hosts(network)


def _network(text: str) -> Network | None:
    """The network ``text`` writes (an address is a /32 or /128), or None if it is not one;
    host bits are allowed, ``10.1.0.5/24`` meaning the /24."""
    inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return ipaddress.ip_network(inner, strict=False)
    except ValueError:
        return None


def host_count(network: Network) -> int:
    """How many addresses of ``network`` a scan contacts (see ``hosts``)."""
    if network.version == 4 and network.prefixlen < 31:
        return network.num_addresses - 2
    return network.num_addresses


def hosts(network: Network) -> Iterator[Address]:
    """The addresses to scan: all of them, except the network and broadcast addresses of an
    IPv4 network larger than /31 (RFC 3021 makes both of a /31 hosts).

    Not ``Network.hosts()`` for IPv6: it leaves out the Subnet-Router anycast address,
    which a server may well hold.
    """
    if network.version == 4 and network.prefixlen < 31:
        return network.hosts()
    return iter(network)
