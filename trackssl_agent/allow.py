"""TRACKSSL_ALLOW: which targets the agent may contact, whatever the cloud asks for.

An address may be contacted when it lies in one of the listed networks, or when the
target's host (name or IP literal) matches one of the listed globs: the customer
named that host.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from dataclasses import dataclass

from trackssl_agent.targets import Target

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_GLOB = re.compile(r"^[A-Za-z0-9*?._-]+$")
_NUMERIC_LABEL = re.compile(r"^[0-9*?\[\]!-]+$")
_OCTET = re.compile(r"^[0-9]{1,3}$")


@dataclass(frozen=True)
class AllowList:
    """Networks and host-name globs; called as ``allow(target, address)``."""

    networks: tuple[Network, ...]
    globs: tuple[str, ...]
    """Lowercase fnmatch patterns over the target's host name."""

    def __call__(self, target: Target, address: str) -> bool:
        """True when ``address`` (resolved for ``target``) may be contacted."""
        name = target.host.lower().rstrip(".")
        if any(fnmatch.fnmatchcase(name, glob) for glob in self.globs):
            return True
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
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
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            continue
        except ValueError:
            pass
        address_pattern = _address_pattern(entry)
        if address_pattern is not None:
            raise ValueError(address_pattern)
        if "/" in entry or ":" in entry or not _GLOB.match(entry):
            raise ValueError(f"{entry!r} is neither a CIDR such as 10.0.0.0/8 nor a host glob")
        globs.append(entry.lower().rstrip("."))
    if not networks and not globs:
        return None
    return AllowList(tuple(networks), tuple(globs))


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
