"""The TrackSSL API schema (SPEC section 5) as pure functions: a domain-list body to
``Domain`` values, and a probe result to the certificate.json payload.

No I/O here: no sockets, files or clocks. ``api`` moves the bytes; this module decides
what they mean, so it is tested without a server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _quote
from typing import Any

from trackssl_agent import __version__, log
from trackssl_agent.base import ascii_values
from trackssl_agent.engine import certificates, protocols
from trackssl_agent.engine.protocols import Protocol
from trackssl_agent.engine.results import ProbeResult, utc_iso
from trackssl_agent.engine.targets import Target
from trackssl_agent.errors import ResponseError, UsageError

SHOWN_SKIPPED = 5
"""Skipped domain-list entries described in full; the rest are counted."""

MAX_ID = 2**63
"""``domain_id`` must be below this: it fits a signed 64-bit integer."""
MAX_HOSTNAME = 255
"""Longer than any DNS name (253) or IPv6 literal with brackets."""

_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)

# The ``protocol`` field, lower-cased and stripped -> the dialogue it names (None: direct
# TLS): a protocol, a URL scheme of SPEC section 2 (``https`` is direct TLS, ``submission``
# is SMTP) or ``--starttls none``. ``auto`` leaves the choice to the port, as an absent field.
_PROTOCOL_FIELD: Mapping[str, Protocol | None] = {
    **{scheme: chosen for scheme, (chosen, _port) in protocols.SCHEMES.items()},
    **{p.value: p for p in Protocol},
    protocols.NONE: None,
}


@dataclass(frozen=True)
class Domain:
    """One entry of ``domains.json``, decided into a Target."""

    domain_id: int
    hostname: str
    port: str
    """The port as text, as the payload echoes it."""
    target: Target


@dataclass(frozen=True)
class Skipped:
    """The domain-list entries left out: how many, and why for the first few."""

    count: int = 0
    first: tuple[str, ...] = ()
    """One warning each for the first ``SHOWN_SKIPPED`` entries skipped."""

    def lines(self) -> list[str]:
        """The warnings to log: the first few in full, then one line counting the rest."""
        more = self.count - len(self.first)
        if more <= 0:
            return list(self.first)
        return [*self.first, f"{more} more domain list entries skipped ({self.count} in all)"]


def shown(value: object) -> str:
    """A value from outside for a message: short, escaped, never a deep structure."""
    if isinstance(value, str):
        # Redacted before the cut: a cut echo of the token would keep part of it.
        text = log.redact(value[:1024])
        return repr(text[:60]) + ("..." if len(text) > 60 or len(value) > 1024 else "")
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if -(10**20) < value < 10**20 else "a huge number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def looks_html(body: bytes, content_type: str) -> bool:
    """True for an HTML page (a proxy's or a captive portal's) where JSON was expected."""
    return "html" in content_type.lower() or body.lstrip()[:1] == b"<"


def html_title(body: bytes) -> str:
    """``title '...'`` of an HTML page, for a message, or ``no title``."""
    match = _TITLE.search(body[:65536])
    if match:
        title = log.redact(match.group(1)[:1024].decode("utf-8", "replace").strip())
        return "title " + repr(title[:80])
    return "no title"


def _json_body(body: bytes, content_type: str, *, what: str) -> Any:
    if looks_html(body, content_type):
        raise ResponseError(
            f"the API answered {what} with an HTML page ({html_title(body)}), not JSON; check "
            "TRACKSSL_URL and whether a proxy or captive portal is in between"
        )
    try:
        return json.loads(body)
    except RecursionError:
        raise ResponseError(f"the API answered {what} with JSON nested too deeply") from None
    except ValueError as exc:  # UnicodeDecodeError included
        reason = log.excerpt(str(exc), 200)
        raise ResponseError(f"the API answered {what} with invalid JSON: {reason}") from None


def _domain_id(raw: object) -> int:
    if isinstance(raw, str):
        value = ascii_values.whole(raw, cap=MAX_ID)
        value = -1 if value is None else value
    elif isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    else:
        value = -1
    if not 0 <= value < MAX_ID:
        raise ValueError(f"bad domain_id {shown(raw)}")
    return value


def _hostname(raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip() or len(raw) > MAX_HOSTNAME:
        raise ValueError(f"bad hostname {shown(raw)}")
    return raw.strip()


def _port(raw: object) -> int:
    if isinstance(raw, str) and len(raw) <= 16:
        value = ascii_values.whole(raw.strip(), cap=65536) or 0
    elif isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    else:
        value = 0
    if not 1 <= value <= 65535:
        raise ValueError(f"bad port {shown(raw)}")
    return value


def dialogue(raw: object, port: int) -> Protocol | None:
    """The dialogue a ``protocol`` field picks on ``port`` (None: direct TLS), decided as
    ``--starttls`` or a scheme of SPEC section 2 would; ValueError for an unknown one."""
    name = raw.strip().lower() if isinstance(raw, str) else None
    if raw is None or raw == "" or name == protocols.AUTO:
        return protocols.PORTS.get(port)
    if name is None or name not in _PROTOCOL_FIELD:
        raise ValueError(f"unknown protocol {shown(raw)}")
    return _PROTOCOL_FIELD[name]


def domain_from_entry(entry: object) -> Domain:
    """One ``data`` entry; ValueError says what is wrong with it (values shown short)."""
    if not isinstance(entry, dict):
        raise ValueError(f"it is {shown(entry) if entry is None else 'not an object'}")
    domain_id = _domain_id(entry.get("domain_id"))
    hostname = _hostname(entry.get("hostname"))
    port = _port(entry.get("port"))
    starttls = dialogue(entry.get("protocol"), port)
    try:
        target = Target.from_parts(hostname, port, starttls)
    except UsageError as exc:
        raise ValueError(log.excerpt(str(exc), 300)) from None
    return Domain(domain_id, hostname, str(port), target)


def _entry_name(entry: object, index: int) -> str:
    """An entry for a message: by its ``domain_id``, as TrackSSL and the rest of the log
    name it; by its place in the list (counted from 1) only when it has no usable id."""
    if isinstance(entry, dict):
        try:
            return f"domain_id {_domain_id(entry.get('domain_id'))}"
        except ValueError:
            pass
    return f"domain list entry number {index + 1} (no usable domain_id)"


def parse_domains(document: Any) -> tuple[list[Domain], Skipped]:
    """``{"data": [...]}`` -> domains; a bad entry is skipped and summarised.

    Memory stays proportional to the good entries: a list of millions of bad ones builds
    no more than ``SHOWN_SKIPPED`` messages.
    """
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise ResponseError('the domain list is not of the form {"data": [...]}')
    domains: list[Domain] = []
    first: list[str] = []
    skipped = 0
    seen: set[int] = set()
    for index, entry in enumerate(document["data"]):
        if entry is None and len(first) >= SHOWN_SKIPPED:
            skipped += 1  # the common junk, counted without raising
            continue
        try:
            domain = domain_from_entry(entry)
            if domain.domain_id in seen:
                raise ValueError("an earlier entry has the same domain_id")
        except ValueError as exc:
            skipped += 1
            if len(first) < SHOWN_SKIPPED:
                first.append(f"{_entry_name(entry, index)} skipped: {exc}")
            continue
        seen.add(domain.domain_id)
        domains.append(domain)
    return domains, Skipped(skipped, tuple(first))


def decode_domains(
    body: bytes, content_type: str = "application/json"
) -> tuple[list[Domain], Skipped]:
    """The body of a ``domains.json`` answer -> domains; ResponseError for anything that is
    not the domain list (HTML, broken or too deeply nested JSON, another shape)."""
    return parse_domains(_json_body(body, content_type, what="the domain list"))


def payload_body(domain: Domain, result: ProbeResult) -> bytes:
    """``payload`` as JSON bytes, built once per result and then posted and stored as they
    are: ASCII and without a newline, so one line of an outbox segment. Written out here
    rather than dumped from the dict: each PEM is encoded once, with no encoder machinery
    per key (this runs for every target of every cycle)."""
    pems = [_quote(certificates.to_pem(der)) for der in result.chain] if result.ok else []
    error = _quote(str(result.error) if result.error else "")
    probed_at = _quote(utc_iso(result.probed_at))
    leaf = pems[0] if pems else '""'
    text = (
        f'{{"domain":{{"domain_id":{domain.domain_id:d},"hostname":{_quote(domain.hostname)},'
        f'"port":{_quote(domain.port)},"certificate":{leaf},'
        f'"error":{error},"chain":[{",".join(pems)}],"probed_at":{probed_at},'
        f'"tls_version":{_optional(result.tls_version)},"address":{_optional(result.address)},'
        f'"agent_version":{_quote(__version__)}}}}}'
    )
    return text.encode("ascii")


def _optional(value: str | None) -> str:
    return "null" if value is None else _quote(value)


def encode_payload(document: Mapping[str, Any]) -> tuple[bytes, int | None]:
    """A payload given as a dict -> its compact JSON bytes, and the domain_id it names."""
    data = json.dumps(document, separators=(",", ":")).encode()
    domain = document.get("domain")
    named = domain.get("domain_id") if isinstance(domain, Mapping) else None
    return data, named if isinstance(named, int) else None


def payload(domain: Domain, result: ProbeResult) -> dict[str, Any]:
    """The body of SPEC section 5's certificate.json post for one probe result."""
    chain = [certificates.to_pem(der) for der in result.chain] if result.ok else []
    return {
        "domain": {
            "domain_id": domain.domain_id,
            "hostname": domain.hostname,
            "port": domain.port,
            "certificate": chain[0] if chain else "",
            "error": str(result.error) if result.error else "",
            "chain": chain,
            "probed_at": utc_iso(result.probed_at),
            "tls_version": result.tls_version,
            "address": result.address,
            "agent_version": __version__,
        }
    }
