"""Sets of addresses as sorted runs of consecutive addresses: what ``discover`` scans is
counted, intersected with TRACKSSL_ALLOW and walked without ever being listed, so a /8 or
``::/0`` costs a few integers, not one object per address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from trackssl_agent.engine.allow import MAPPED, Address, Network

_MAPPED_FIRST = int(MAPPED.network_address)
_MAPPED_LAST = int(MAPPED.broadcast_address)


@dataclass(frozen=True, order=True)
class Span:
    """The addresses ``first`` to ``last`` (inclusive) of one IP version, as integers.
    Ordered as ``discover`` lists addresses: IPv4 first, then numeric order."""

    version: int
    first: int
    last: int

    @property
    def size(self) -> int:
        """How many addresses the span holds."""
        return self.last - self.first + 1


def hosts(network: Network) -> list[Span]:
    """The addresses of ``network`` a scan contacts: all of them, except the network and
    broadcast addresses of an IPv4 network larger than /31 (RFC 3021 makes both of a /31
    hosts). The IPv4-mapped part of an IPv6 network (``::ffff:0:0/96``) is the IPv4
    network it maps, so that one host is one address however it is written.

    Not ``Network.hosts()`` for IPv6: it leaves out the Subnet-Router anycast address,
    which a server may well hold.
    """
    if isinstance(network, ipaddress.IPv4Network):
        first, last = int(network.network_address), int(network.broadcast_address)
        if network.prefixlen < 31:
            first, last = first + 1, last - 1
        return [Span(4, first, last)]
    spans = [Span(6, first, last) for first, last in _outside_mapped(network)]
    mapped = _mapped_part(network)
    return hosts(mapped) + spans if mapped is not None else spans


def every(network: Network) -> list[Span]:
    """All addresses of ``network`` (an allow-list network): the IPv4-mapped part of an
    IPv6 network is left out, as ``allow`` checks such an address as IPv4."""
    if isinstance(network, ipaddress.IPv4Network):
        return [Span(4, int(network.network_address), int(network.broadcast_address))]
    mapped = _mapped_part(network)
    if mapped is not None and network.prefixlen >= MAPPED.prefixlen:
        return every(mapped)  # allow.parse writes such a network as IPv4 already
    return [Span(6, first, last) for first, last in _outside_mapped(network)]


def _outside_mapped(network: ipaddress.IPv6Network) -> list[tuple[int, int]]:
    """The runs of ``network`` outside ``::ffff:0:0/96`` (none, one or two)."""
    first, last = int(network.network_address), int(network.broadcast_address)
    if last < _MAPPED_FIRST or first > _MAPPED_LAST:
        return [(first, last)]
    runs = []
    if first < _MAPPED_FIRST:
        runs.append((first, _MAPPED_FIRST - 1))
    if last > _MAPPED_LAST:
        runs.append((_MAPPED_LAST + 1, last))
    return runs


def _mapped_part(network: ipaddress.IPv6Network) -> ipaddress.IPv4Network | None:
    """The IPv4 network that the part of ``network`` within ``::ffff:0:0/96`` maps (two
    CIDRs overlap only when one holds the other), or None."""
    if network.subnet_of(MAPPED):
        first = int(network.network_address) - _MAPPED_FIRST
        return ipaddress.IPv4Network((first, network.prefixlen - MAPPED.prefixlen))
    if network.supernet_of(MAPPED):
        return ipaddress.IPv4Network("0.0.0.0/0")
    return None


def single(address: Address) -> Span:
    """The span of one address."""
    return Span(address.version, int(address), int(address))


def union(spans: Iterable[Span]) -> tuple[Span, ...]:
    """The spans merged: sorted, disjoint, adjacent runs joined."""
    merged: list[Span] = []
    for span in sorted(spans):
        last = merged[-1] if merged else None
        if last is not None and last.version == span.version and span.first <= last.last + 1:
            if span.last > last.last:
                merged[-1] = Span(span.version, last.first, span.last)
        else:
            merged.append(span)
    return tuple(merged)


def intersection(left: tuple[Span, ...], right: tuple[Span, ...]) -> tuple[Span, ...]:
    """The addresses in both (each sorted and disjoint, as ``union`` returns them)."""
    found: list[Span] = []
    i = j = 0
    while i < len(left) and j < len(right):
        a, b = left[i], right[j]
        if a.version == b.version:
            first, last = max(a.first, b.first), min(a.last, b.last)
            if first <= last:
                found.append(Span(a.version, first, last))
        if (a.version, a.last) < (b.version, b.last):
            i += 1
        else:
            j += 1
    return tuple(found)


def count(spans: Iterable[Span]) -> int:
    """How many addresses the spans hold (disjoint spans: as ``union`` returns them)."""
    return sum(span.size for span in spans)


def addresses(spans: Iterable[Span]) -> Iterator[Address]:
    """The addresses of the spans in order, one at a time."""
    for span in spans:
        make = ipaddress.IPv4Address if span.version == 4 else ipaddress.IPv6Address
        for number in range(span.first, span.last + 1):
            yield make(number)


def address_at(spans: Iterable[Span], index: int) -> Address:
    """The ``index``-th address of the spans; IndexError beyond the last."""
    for span in spans:
        if 0 <= index < span.size:
            number = span.first + index
            return (
                ipaddress.IPv4Address(number)
                if span.version == 4
                else ipaddress.IPv6Address(number)
            )
        index -= span.size
    raise IndexError("address index out of range")
