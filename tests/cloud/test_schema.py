"""Property tests of the pure API schema (issue 12, part 4): domain-list entries become
Target values directly, any JSON decodes or is one ResponseError, and the payload bytes are
the result's fields. No server: the module does no I/O."""

from __future__ import annotations

import ast
import ipaddress
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trackssl_agent import __version__
from trackssl_agent.cloud import schema
from trackssl_agent.engine import certificates, protocols
from trackssl_agent.engine.protocols import Protocol
from trackssl_agent.engine.results import ErrorKind, ProbeError, ProbeResult, utc_iso
from trackssl_agent.engine.targets import Target, parse_target
from trackssl_agent.errors import ResponseError, UsageError

BOUNDED = settings(max_examples=150, deadline=1000, suppress_health_check=[HealthCheck.too_slow])

labels = st.from_regex(r"\A[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?\Z")
names = st.lists(labels, min_size=1, max_size=4).map(".".join)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(min_value=1, max_value=65535)
# A protocol field as the API may send it, with the dialogue it must pick (None: direct TLS).
named_protocols = st.sampled_from(
    [(scheme, chosen) for scheme, (chosen, _port) in protocols.SCHEMES.items()]
    + [(p.value, p) for p in Protocol]
    + [(protocols.NONE, None)]
)


def is_ip(host: str) -> bool:
    """True for an IP literal."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def normal(host: str) -> str:
    """``host`` as a Target holds it: an IP literal normalised, a name unchanged."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


@BOUNDED
@given(
    domain_id=st.integers(min_value=0, max_value=2**63 - 1),
    host=st.one_of(names, ipv4, ipv6),
    port=ports,
    port_as_text=st.booleans(),
    field=st.one_of(st.none(), named_protocols),
)
def test_valid_parts_round_trip_to_a_target(
    domain_id: int,
    host: str,
    port: int,
    port_as_text: bool,
    field: tuple[str, Protocol | None] | None,
) -> None:
    """A valid entry becomes a Domain whose Target has exactly the host, port and dialogue
    given (the port table deciding when no protocol is named), and echoes the inputs."""
    entry: dict[str, Any] = {
        "domain_id": domain_id,
        "hostname": host,
        "port": str(port) if port_as_text else port,
    }
    if field is not None:
        entry["protocol"] = field[0]
    domain = schema.domain_from_entry(entry)
    expected = protocols.PORTS.get(port) if field is None else field[1]
    assert (domain.domain_id, domain.hostname, domain.port) == (domain_id, host, str(port))
    assert domain.target.host == normal(host)
    assert domain.target.port == port
    assert domain.target.starttls is expected
    assert domain.target.is_ip == is_ip(host)


@BOUNDED
@given(host=st.one_of(names, ipv4, ipv6, st.text(max_size=20)), port=ports)
def test_from_parts_checks_as_parse_target_does(host: str, port: int) -> None:
    """``Target.from_parts`` accepts exactly the hosts ``parse_target`` accepts in
    ``host:port``, and builds the same Target: one set of rules, no string round trip."""
    text = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    chosen = protocols.PORTS.get(port)
    try:
        parsed: Target | None = parse_target(text)
    except UsageError:
        parsed = None
    try:
        built: Target | None = Target.from_parts(host, port, chosen)
    except UsageError as exc:
        built = None
        assert text in str(exc) or repr(text) in str(exc)
    assert built == parsed


@pytest.mark.parametrize(("text", "chosen"), sorted(protocols.SCHEMES.items()))
def test_every_scheme_names_its_dialogue(text: str, chosen: tuple[Protocol | None, int]) -> None:
    """Each scheme of the protocol table is a valid ``protocol`` field, in any case and
    with spaces around, and picks the scheme's dialogue whatever the port."""
    for variant in (text, text.upper(), f" {text} "):
        assert schema.dialogue(variant, 443) is chosen[0]


@pytest.mark.parametrize("member", list(Protocol))
def test_every_protocol_is_accepted(member: Protocol) -> None:
    """The name of every Protocol in the table is accepted and picks that protocol, on a
    port of another protocol too."""
    assert schema.dialogue(member.value, 1) is member
    entry = {"domain_id": 1, "hostname": "a.example", "port": 443, "protocol": member.value}
    assert schema.domain_from_entry(entry).target.starttls is member


@BOUNDED
@given(port=ports)
def test_auto_and_absent_leave_the_choice_to_the_port(port: int) -> None:
    """No protocol, ``""`` and ``auto`` pick the port table's dialogue; ``none`` direct TLS."""
    for raw in (None, "", "auto", " AUTO "):
        assert schema.dialogue(raw, port) is protocols.PORTS.get(port)
    assert schema.dialogue("none", port) is None


@BOUNDED
@given(
    raw=st.one_of(
        st.text(max_size=12).filter(
            lambda t: t != "" and t.strip().lower() not in protocols.SCHEMES
            and t.strip().lower() not in protocols.STARTTLS_CHOICES
        ),
        st.integers(), st.booleans(), st.lists(st.none(), max_size=2),
    )
)  # fmt: skip
def test_unknown_protocols_are_a_value_error(raw: object) -> None:
    """Anything else in ``protocol`` is refused with ``unknown protocol``, never guessed."""
    with pytest.raises(ValueError, match=r"^unknown protocol "):
        schema.dialogue(raw, 443)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20)),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
entries = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {
            "domain_id": st.one_of(st.integers(-3, 50), json_values),
            "hostname": st.one_of(names, ipv6, json_values),
            "port": st.one_of(ports, ports.map(str), json_values),
        },
        optional={"protocol": st.one_of(named_protocols.map(lambda p: p[0]), json_values)},
    ),
)


documents = st.one_of(json_values, st.fixed_dictionaries({"data": st.lists(entries, max_size=15)}))


@settings(BOUNDED, max_examples=80)
@given(document=documents)
def test_any_json_is_domains_and_skips_or_one_response_error(document: Any) -> None:
    """Any JSON decodes to Domains plus counted skips, one per entry, or raises only
    ResponseError; a domain_id never appears twice."""
    body = json.dumps(document).encode()
    try:
        domains, skipped = schema.decode_domains(body)
    except ResponseError as exc:
        assert not (isinstance(document, dict) and isinstance(document.get("data"), list))
        assert str(exc).isprintable()
        return
    assert all(isinstance(d, schema.Domain) for d in domains)
    assert len(domains) + skipped.count == len(document["data"])
    assert len({d.domain_id for d in domains}) == len(domains)
    assert len(skipped.first) == min(skipped.count, schema.SHOWN_SKIPPED)


ders = st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=3).map(tuple)
texts = st.text(max_size=30)
optional_texts = st.one_of(st.none(), texts)


@BOUNDED
@given(
    domain_id=st.integers(min_value=0, max_value=2**63 - 1),
    hostname=texts,
    port=ports.map(str),
    chain=ders,
    error=st.one_of(st.none(), st.builds(ProbeError, st.sampled_from(ErrorKind), texts)),
    tls_version=optional_texts,
    address=optional_texts,
    probed_at=st.datetimes(timezones=st.just(UTC)),
)
def test_payload_body_is_json_of_the_result(
    *,
    domain_id: int,
    hostname: str,
    port: str,
    chain: tuple[bytes, ...],
    error: ProbeError | None,
    tls_version: str | None,
    address: str | None,
    probed_at: datetime,
) -> None:
    """The posted bytes are one ASCII line of JSON whose fields are the result's: the
    chain as PEM (leaf first) only when the probe succeeded, else the error text."""
    target = Target.from_parts("a.example", int(port), None)
    domain = schema.Domain(domain_id, hostname, port, target)
    result = ProbeResult(
        target=target, servername=None, address=address, probed_at=probed_at,
        elapsed_ms=1.0, chain=chain, tls_version=tls_version, error=error,
    )  # fmt: skip
    body = schema.payload_body(domain, result)
    assert body.isascii()
    assert b"\n" not in body
    fields = json.loads(body)["domain"]
    pems = [certificates.to_pem(der) for der in chain] if error is None else []
    assert fields == {
        "domain_id": domain_id,
        "hostname": hostname,
        "port": port,
        "certificate": pems[0] if pems else "",
        "error": str(error) if error else "",
        "chain": pems,
        "probed_at": utc_iso(probed_at),
        "tls_version": tls_version,
        "address": address,
        "agent_version": __version__,
    }
    assert fields == schema.payload(domain, result)["domain"]


def test_encode_payload_names_its_domain_id() -> None:
    """A payload given as a dict is compact JSON and says which domain it is for."""
    data, named = schema.encode_payload({"domain": {"domain_id": 5, "port": "443"}})
    assert data == b'{"domain":{"domain_id":5,"port":"443"}}'
    assert named == 5
    assert schema.encode_payload({"domain": "x"})[1] is None


def test_skip_reasons_are_the_documented_ones() -> None:
    """Each kind of bad entry is skipped with its own short reason."""
    domains, skipped = schema.parse_domains(
        {"data": [
            {"domain_id": 1, "hostname": "a.example", "port": 443, "protocol": "gopher"},
            {"domain_id": 2, "hostname": "bad host", "port": 443},
            {"domain_id": 3, "hostname": "a.example", "port": 0},
            {"domain_id": 4, "hostname": "::1", "port": 443},
            {"domain_id": 4, "hostname": "a.example", "port": 443},
            None,
        ]}
    )  # fmt: skip
    assert [d.target.text for d in domains] == ["[::1]:443"]
    assert skipped.lines() == [
        "domain_id 1 skipped: unknown protocol 'gopher'",
        "domain_id 2 skipped: invalid target 'bad host:443': it contains spaces, "
        "control or invisible characters",
        "domain_id 3 skipped: bad port 0",
        "domain_id 4 skipped: an earlier entry has the same domain_id",
        "domain list entry number 6 (no usable domain_id) skipped: it is None",
    ]


def test_the_schema_module_does_no_io() -> None:
    """cloud.schema imports nothing that reaches a socket, a file, the clock or the transport."""
    source = Path(schema.__file__).read_text(encoding="utf-8")
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
    forbidden = {"socket", "ssl", "http", "os", "time", "pathlib", "requests", "urllib"}
    assert not {name.split(".")[0] for name in imported} & forbidden
    transport = {
        "cloud.api",
        "cloud.transport",
        "cloud.session",
        "engine.probe",
        "state.outbox",
        "state.statedir",
    }
    assert not imported & {f"trackssl_agent.{name}" for name in transport}
    assert "open(" not in source
