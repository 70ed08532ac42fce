"""What ``discover`` scans: NETWORK arguments -> addresses, ``--ports`` -> ports, the limits
and TRACKSSL_ALLOW applied before anything is contacted. The scan itself is
``discover.scan``.

Nothing here touches the network except a host name's lookup.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from trackssl_agent.discover import spans as discover_spans
from trackssl_agent.discover.spans import Span
from trackssl_agent.engine import probe, protocols
from trackssl_agent.engine.allow import AllowList, unmapped
from trackssl_agent.engine.results import ProbeError
from trackssl_agent.engine.targets import parse_target
from trackssl_agent.engine.transport import Deadline
from trackssl_agent.errors import UsageError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_ADDRESSES = 65_536
"""More addresses to contact than this (a /16) is a usage error unless ``--max-pairs`` is
given; those outside TRACKSSL_ALLOW do not count."""
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
class Addresses:
    """The addresses a scan contacts, sorted (IPv4 first), each once: held as spans and
    generated one at a time as the scan asks for them."""

    spans: tuple[Span, ...]

    @property
    def count(self) -> int:
        """How many there are (``len`` cannot tell beyond 2**63)."""
        return discover_spans.count(self.spans)

    def __iter__(self) -> Iterator[Address]:
        return discover_spans.addresses(self.spans)

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        return bool(self.spans)  # not ``len``: that raises beyond 2**63

    def __getitem__(self, index: int) -> Address:
        return discover_spans.address_at(self.spans, index)


@dataclass(frozen=True)
class Plan:
    """What a scan will contact: decided before the first connection."""

    addresses: Addresses
    """The addresses to contact, sorted (IPv4 first), each once."""
    ports: tuple[int, ...]
    outside: int
    """Addresses of the NETWORK arguments that TRACKSSL_ALLOW leaves out: never contacted."""

    @property
    def total_addresses(self) -> int:
        """Every address the arguments name, those outside TRACKSSL_ALLOW included."""
        return self.addresses.count + self.outside

    @property
    def pairs(self) -> int:
        """Address x port pairs to try."""
        return self.addresses.count * len(self.ports)


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
    allow: AllowList | None = None,
    max_pairs: int | None = None,
    resolver: Resolver,
) -> Plan:
    """Turn NETWORK arguments into the addresses to contact; UsageError (exit 3) for a bad
    argument or a scan beyond the limits, before anything is contacted.

    Nothing is listed: each argument is a few spans, intersected with TRACKSSL_ALLOW's
    networks, so the addresses left out are counted, never generated. The limits count
    the addresses that will be contacted: without ``max_pairs``, at most
    ``MAX_ADDRESSES`` addresses and ``MAX_PAIRS`` pairs; with it, at most ``max_pairs``
    pairs and nothing else.
    """
    if not ports:
        raise UsageError("--ports names no port")
    address_limit = MAX_ADDRESSES if max_pairs is None else max(max_pairs // len(ports), 1)
    fence = _fence(allow)
    fenced = allow is not None
    # Every address the arguments name, and those of them to contact.
    mentioned: tuple[Span, ...] = ()
    chosen: tuple[Span, ...] = ()
    for text in networks:
        name, spans = _expand(text, family, resolver)
        inside = spans
        # A host name argument is let in whole by a glob naming it, as a target would be.
        admitted = allow is None or (name is not None and allow.admits_name(name))
        if fence is not None and not admitted:
            inside = discover_spans.intersection(spans, fence)
        count = discover_spans.count(inside)
        if count > address_limit:
            where = f"{text} holds"
            raise _too_many_addresses(where, count, address_limit, max_pairs, fenced=fenced)
        mentioned = discover_spans.union(mentioned + spans)
        chosen = discover_spans.union(chosen + inside)
        count = discover_spans.count(chosen)
        if count > address_limit:
            where = "the networks hold"
            raise _too_many_addresses(where, count, address_limit, max_pairs, fenced=fenced)
    pair_limit = MAX_PAIRS if max_pairs is None else max_pairs
    total = discover_spans.count(chosen)
    pairs = total * len(ports)
    if pairs > pair_limit:
        raise UsageError(
            f"discover: {total:,} addresses x {len(ports):,} ports is "
            f"{pairs:,} pairs, more than {pair_limit:,}; narrow NETWORK or --ports, or raise "
            "the limit with --max-pairs N"
        )
    outside = discover_spans.count(mentioned) - total
    return Plan(addresses=Addresses(chosen), ports=tuple(ports), outside=outside)


def address_key(address: Address) -> tuple[int, int]:
    """Sort key: IPv4 before IPv6, then numeric order."""
    return address.version, int(address)


def _fence(allow: AllowList | None) -> tuple[Span, ...] | None:
    """TRACKSSL_ALLOW's networks as spans, or None when everything is allowed."""
    if allow is None:
        return None
    return discover_spans.union(s for n in allow.networks for s in discover_spans.every(n))


def _too_many_addresses(
    where: str, count: int, limit: int, max_pairs: int | None, *, fenced: bool
) -> UsageError:
    """The usage error for more addresses than ``limit``; ``where`` says whose they are."""
    how = (
        "raise --max-pairs"
        if max_pairs is not None
        else "allow more with --max-pairs N (address x port pairs)"
    )
    inside = " inside TRACKSSL_ALLOW" if fenced else ""
    return UsageError(
        f"discover: {where} {count:,} addresses{inside}, more than the {limit:,} allowed; "
        f"narrow NETWORK, or {how}"
    )


def _expand(text: str, family: int, resolver: Resolver) -> tuple[str | None, tuple[Span, ...]]:
    """``(host name or None, spans)`` of one NETWORK argument, of the family asked for;
    UsageError when it is none of a CIDR, an address or a host name."""
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
        return text, discover_spans.union(discover_spans.single(unmapped(a)) for a in addresses)
    spans = discover_spans.union(discover_spans.hosts(network))
    wanted = {socket.AF_INET: 4, socket.AF_INET6: 6}.get(socket.AddressFamily(family))
    if wanted is None:
        return None, spans
    kept = tuple(span for span in spans if span.version == wanted)
    if not kept:
        other = 10 - wanted
        mapped = " (IPv4-mapped)" if network.version != other else ""
        noun = "address" if network.num_addresses == 1 else "network"
        # The words probe uses for the same mismatch.
        problem = probe.wrong_family(family, f"{text}{mapped}", other, noun=noun, verb="scan")
        raise UsageError(f"discover: {problem}")
    return None, kept


def _network(text: str) -> Network | None:
    """The network ``text`` writes (an address is a /32 or /128), or None if it is not one;
    host bits are allowed, ``10.1.0.5/24`` meaning the /24."""
    inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return ipaddress.ip_network(inner, strict=False)
    except ValueError:
        return None
