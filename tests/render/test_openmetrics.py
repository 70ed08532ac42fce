"""OpenMetrics output (``--format openmetrics``) read back by prometheus_client's parser, and
``--output FILE`` written atomically, for ``probe`` and ``check-once --targets``."""

from __future__ import annotations

import math
import os
import stat
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests import tls_servers
from tests.certs import Chain, der, key_pem, make_cert, make_chain, new_key, pem
from tests.cli_helpers import run_cli
from tests.listeners import closed_port
from tests.packaging.test_packaging import EXE, LINUX, one, parse_unit
from trackssl_agent.engine.certificates import sha256_hex
from trackssl_agent.engine.results import ErrorKind, ProbeError, ProbeResult
from trackssl_agent.engine.targets import parse_target
from trackssl_agent.errors import AgentError
from trackssl_agent.render import openmetrics
from trackssl_agent.render.output_file import write_atomic

HOSTILE_CN = 'quote" back\\slash\nnew line'
"""A subject with every character the label syntax must escape."""


@dataclass(frozen=True)
class Served:
    """A running loopback TLS server and the chain it presents."""

    server: tls_servers.TcpServer
    chain: Chain


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A TLS server presenting leaf + intermediate (two certificates)."""
    chain = make_chain(tmp_path_factory.mktemp("om"), name="om", days=40)
    server = tls_servers.tls_server(tls_servers.server_context(chain))
    yield Served(server, chain)
    server.close()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A TLS server whose self-signed leaf's CN holds a quote, a backslash and a newline."""
    folder = tmp_path_factory.mktemp("hostile-name")
    key = new_key("ec")
    cert = make_cert(cn=HOSTILE_CN, key=key, days=90)
    (folder / "h.crt").write_bytes(pem(cert))
    (folder / "h.key").write_bytes(key_pem(key))
    chain = Chain(folder / "h.crt", folder / "h.key", folder / "h.crt", (der(cert),), cert)
    server = tls_servers.tls_server(tls_servers.server_context(chain))
    yield Served(server, chain)
    server.close()


def families(text: str) -> dict[str, Metric]:
    """The families of an exposition by name (the parser raises on invalid text)."""
    parsed = text_string_to_metric_families(text)  # type: ignore[no-untyped-call]  # untyped
    return {family.name: family for family in parsed}


def parse(text: str) -> dict[str, list[Sample]]:
    """The samples of an exposition by family name."""
    return {name: family.samples for name, family in families(text).items()}


def only(samples: list[Sample], **labels: str) -> Sample:
    """The one sample whose labels include ``labels``."""
    found = [s for s in samples if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (labels, samples)
    return found[0]


def probe_metrics(capsys: pytest.CaptureFixture[str], *targets: str) -> tuple[int, str]:
    """``probe --format openmetrics TARGET...``: (exit code, stdout)."""
    code, out, _ = run_cli(["probe", "--format", "openmetrics", *targets], capsys)
    return code, out


# -- the families, against real servers ----------------------------------------------------


def test_leaf_not_after_is_the_certificates(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    """The leaf's not_after and not_before samples are its validity dates as Unix time."""
    target = served.server.endpoint
    code, out = probe_metrics(capsys, target)
    assert code == 0
    metrics = parse(out)
    leaf = served.chain.leaf
    not_after = only(metrics["trackssl_cert_not_after_seconds"], target=target, depth="0")
    assert not_after.value == leaf.not_valid_after_utc.timestamp()
    not_before = only(metrics["trackssl_cert_not_before_seconds"], target=target, depth="0")
    assert not_before.value == leaf.not_valid_before_utc.timestamp()
    assert not_after.labels["subject"] == leaf.subject.rfc4514_string()
    serial = leaf.serial_number.to_bytes((leaf.serial_number.bit_length() + 7) // 8, "big")
    assert not_after.labels["serial"] == serial.hex()


def test_chain_depths_follow_the_presented_order(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    """A leaf + intermediate chain gives depth 0 (the leaf) and 1 (the intermediate), each
    with its own sha256 and issuer."""
    target = served.server.endpoint
    _, out = probe_metrics(capsys, target)
    samples = parse(out)["trackssl_cert_not_after_seconds"]
    by_depth = {s.labels["depth"]: s.labels for s in samples}
    assert sorted(by_depth) == ["0", "1"]
    ders = served.chain.ders
    assert [by_depth[d]["sha256"] for d in ("0", "1")] == [sha256_hex(x) for x in ders]
    assert by_depth["1"]["subject"] == "CN=om Test Issuing CA"
    assert by_depth["1"]["issuer"] == "CN=om Test Root CA"


def test_success_duration_and_tls_version(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    """A probed target: success 1, a positive duration in seconds, its TLS version, no error."""
    target = served.server.endpoint
    _, out = probe_metrics(capsys, target)
    metrics = parse(out)
    assert only(metrics["trackssl_probe_success"], target=target).value == 1
    assert 0 < only(metrics["trackssl_probe_duration_seconds"], target=target).value < 10
    version = only(metrics["trackssl_tls_version_info"], target=target)
    assert version.labels["version"] in {"TLSv1.2", "TLSv1.3"}
    assert version.value == 1
    assert metrics["trackssl_probe_error_info"] == []


def test_failed_target_has_success_0_and_its_error_kind(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    """A closed loopback port: success 0, error_info{kind="refused"} 1, no certificate or
    version sample; the good target beside it is unaffected; exit 2 as for text."""
    good = served.server.endpoint
    closed = f"127.0.0.1:{closed_port()}"
    code, out = probe_metrics(capsys, good, closed)
    assert code == 2
    metrics = parse(out)
    assert only(metrics["trackssl_probe_success"], target=closed).value == 0
    assert only(metrics["trackssl_probe_success"], target=good).value == 1
    error = only(metrics["trackssl_probe_error_info"], target=closed)
    assert error.labels["kind"] == "refused"
    assert error.value == 1
    cert_targets = {s.labels["target"] for s in metrics["trackssl_cert_not_after_seconds"]}
    assert cert_targets == {good}
    assert {s.labels["target"] for s in metrics["trackssl_tls_version_info"]} == {good}


def test_target_label_is_the_target_as_given(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    """``target`` is the TARGET text the user typed (scheme and all), not a normalized form."""
    given_text = f"tls://localhost:{served.server.port}"
    code, out = probe_metrics(capsys, given_text)
    assert code == 0
    assert only(parse(out)["trackssl_probe_success"], target=given_text).value == 1


def test_label_escaping_round_trips_a_hostile_subject(
    hostile: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    """A subject with a quote, a backslash and a newline parses back to the very string the
    certificate summary holds, and the exposition stays one sample per line."""
    target = hostile.server.endpoint
    code, out = probe_metrics(capsys, target)
    assert code == 0
    expected = hostile.chain.leaf.subject.rfc4514_string()
    assert '"' in expected and "\\" in expected and "\n" in expected
    sample = only(parse(out)["trackssl_cert_not_after_seconds"], target=target, depth="0")
    assert sample.labels["subject"] == expected
    assert sample.labels["issuer"] == expected
    assert sum(line.startswith("trackssl_cert_not_after_seconds") for line in out.splitlines()) == 1


def test_exposition_metadata_and_eof(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    """Every family is a typed gauge with HELP; the time families declare the unit seconds;
    the text ends with ``# EOF`` and a line feed."""
    _, out = probe_metrics(capsys, served.server.endpoint)
    assert out.endswith("\n# EOF\n")
    found = families(out)
    assert set(found) == {
        "trackssl_probe_success", "trackssl_probe_duration_seconds",
        "trackssl_probe_error_info", "trackssl_cert_not_after_seconds",
        "trackssl_cert_not_before_seconds", "trackssl_tls_version_info",
        "trackssl_probe_status", "trackssl_chain_verified",  # SPEC section 4a
    }  # fmt: skip
    for name, family in found.items():
        assert family.type == "gauge", name
        assert family.documentation, name
        assert family.unit == ("seconds" if name.endswith("_seconds") else ""), name


# -- the renderer on its own ----------------------------------------------------------------


def result(text: str, **fields: object) -> ProbeResult:
    """A ProbeResult for TARGET ``text`` with ``fields``."""
    return ProbeResult(
        target=parse_target(text, starttls="auto"), servername=None, address="127.0.0.1",
        probed_at=datetime.now(UTC), elapsed_ms=12.5, **fields,  # type: ignore[arg-type]
    )  # fmt: skip


def test_unparseable_certificate_gives_empty_labels_and_nan() -> None:
    """A chain of bytes that are not a certificate: empty subject/issuer/serial labels, the
    sha256 of the bytes, NaN times; rendering does not fail."""
    text = openmetrics.render([result("a.example", chain=(b"\x30\x03junk",), tls_version=None)])
    sample = only(parse(text)["trackssl_cert_not_after_seconds"], target="a.example")
    assert (sample.labels["subject"], sample.labels["issuer"], sample.labels["serial"]) == (
        "", "", "",
    )  # fmt: skip
    assert sample.labels["sha256"] == sha256_hex(b"\x30\x03junk")
    assert math.isnan(sample.value)
    version = only(parse(text)["trackssl_tls_version_info"], target="a.example")
    assert version.labels["version"] == ""


def test_a_target_listed_twice_is_rendered_once() -> None:
    """The same TARGET twice gives one sample per family (a repeated label set would make
    Prometheus reject the exposition)."""
    error = ProbeError(ErrorKind.TIMEOUT, "no answer")
    text = openmetrics.render([result("b.example", error=error), result("b.example", error=error)])
    metrics = parse(text)
    assert len(metrics["trackssl_probe_success"]) == 1
    assert only(metrics["trackssl_probe_error_info"], target="b.example").labels["kind"] == (
        "timeout"
    )


def test_no_results_is_a_valid_exposition() -> None:
    """No results: the families' metadata and ``# EOF``, which the parser accepts."""
    assert all(samples == [] for samples in parse(openmetrics.render([])).values())


def test_lone_surrogate_cannot_break_the_encoding() -> None:
    """A string that is not valid Unicode text (a lone surrogate) is rendered as ``?`` so
    the exposition can be encoded as UTF-8."""
    assert openmetrics.escape_label_value("a\udcffb") == "a?b"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
@example('" # {a="b"} 1')  # what an exemplar or a second label looks like
@example('\\n\\\\"')  # escape sequences themselves, as text
@example("\x00\r\t}, ")
def test_any_label_value_round_trips(value: str) -> None:
    """Any text as a label value comes back unchanged through the escaping and the parser."""
    family = openmetrics.Family("t_seconds", "h", "seconds")
    text = "\n".join([*openmetrics.render_family(family, [((("v", value),), 1.0)]), "# EOF\n"])
    assert parse(text)["t_seconds"][0].labels["v"] == value


@pytest.mark.parametrize(
    ("value", "shown"),
    [(1.0, "1"), (0.0125, "0.0125"), (1798761600.0, "1798761600"), (-5.0, "-5"),
     (math.nan, "NaN")],
)  # fmt: skip
def test_number_format(value: float, shown: str) -> None:
    """Integers have no decimal point, NaN is spelt as the format wants."""
    assert openmetrics.format_value(value) == shown


# -- --format and --json --------------------------------------------------------------------


def test_json_and_format_json_are_the_same(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--json`` is the short form of ``--format json``: both print the JSON array."""
    target = served.server.endpoint
    _, short, _ = run_cli(["probe", "--json", target], capsys)
    _, long, _ = run_cli(["probe", "--format", "json", target], capsys)
    assert short.startswith("[") and long.startswith("[")
    assert short.count('"target"') == long.count('"target"') == 1


def test_json_with_another_format_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """``--json --format openmetrics`` contradicts itself: exit 3, nothing probed."""
    code, out, err = run_cli(["probe", "--json", "--format", "openmetrics", "x.invalid"], capsys)
    assert code == 3
    assert out == ""
    assert "--json is short for --format json" in err


def test_pem_with_openmetrics_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """``--pem`` prints certificates only; with ``--format openmetrics`` it is exit 3."""
    code, _, err = run_cli(["probe", "--pem", "--format", "openmetrics", "x.invalid"], capsys)
    assert code == 3
    assert "--pem and --format openmetrics exclude each other" in err


# -- --output --------------------------------------------------------------------------------


def test_probe_output_writes_the_file_whole(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--output F``: nothing on stdout, F parses, mode 0644, no temporary file left, and a
    second run replaces it."""
    path = tmp_path / "trackssl.prom"
    path.write_text("old content that is not metrics\n")
    target = served.server.endpoint
    args = ["probe", "--format", "openmetrics", "--output", str(path), target]
    code, out, _ = run_cli(args, capsys)
    assert code == 0
    assert out == ""
    assert only(parse(path.read_text())["trackssl_probe_success"], target=target).value == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trackssl.prom"]
    if sys.platform != "win32":
        assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_output_in_a_missing_folder_is_a_usage_error_before_probing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An --output whose folder does not exist: exit 3 naming the folder, before any probe
    (a closed port would otherwise make it exit 2)."""
    closed = f"127.0.0.1:{closed_port()}"
    path = tmp_path / "missing" / "x.prom"
    code, _, err = run_cli(["probe", "--output", str(path), closed], capsys)
    assert code == 3
    assert "does not exist" in err
    assert str(tmp_path / "missing") in err


def test_write_atomic_failure_leaves_no_temporary(tmp_path: Path) -> None:
    """When the rename cannot happen (a folder is in the way) the error says so and no
    temporary file stays behind."""
    blocker = tmp_path / "metrics.prom"
    blocker.mkdir()
    (blocker / "keep").write_text("x")
    with pytest.raises(AgentError, match="cannot write it"):
        write_atomic(blocker, b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.prom"]


def test_readers_never_see_a_partial_file(tmp_path: Path) -> None:
    """While the file is replaced 150 times with 170 kB expositions, a reader that reads it
    in a loop always gets a complete exposition (old or new), never a torn one."""
    path = tmp_path / "m.prom"
    family = openmetrics.Family("t", "h")

    def body(n: int) -> bytes:
        samples = [((("i", f"{n}-{i}"),), float(i)) for i in range(9000)]
        return "\n".join([*openmetrics.render_family(family, samples), "# EOF\n"]).encode()

    bodies = [body(0), body(1)]
    write_atomic(path, bodies[0])
    done = threading.Event()
    torn: list[int] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not done.is_set():
            data = path.read_bytes()
            reads += 1
            if data not in bodies:
                torn.append(len(data))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for n in range(150):
            write_atomic(path, bodies[n % 2])
    finally:
        done.set()
        thread.join()
    assert reads > 10
    assert torn == []
    assert [p.name for p in tmp_path.iterdir()] == ["m.prom"]


# -- check-once --targets -------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No TRACKSSL_* variables, a state dir under tmp_path, tmp_path as working dir."""
    for name in list(os.environ):
        if name.startswith("TRACKSSL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TRACKSSL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_check_once_targets_openmetrics_output_end_to_end(
    clean_env: Path, served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    """``check-once --targets FILE --format openmetrics --output F`` writes every target's
    metrics to F (a failed one with its kind) and exits with the probe exit code."""
    closed = f"127.0.0.1:{closed_port()}"
    targets = clean_env / "targets.txt"
    targets.write_text(f"{served.server.endpoint}  # the good one\n{closed}\n")
    out_file = clean_env / "textfile" / "trackssl.prom"
    out_file.parent.mkdir()
    code, out, _ = run_cli(
        ["check-once", "--targets", str(targets), "--format", "openmetrics",
         "--output", str(out_file)],
        capsys,
    )  # fmt: skip
    assert code == 2  # one target could not be probed
    assert out == ""
    metrics = parse(out_file.read_text())
    success = {s.labels["target"]: s.value for s in metrics["trackssl_probe_success"]}
    assert success == {served.server.endpoint: 1, closed: 0}
    assert only(metrics["trackssl_probe_error_info"], target=closed).labels["kind"] == "refused"
    assert sorted(p.name for p in out_file.parent.iterdir()) == ["trackssl.prom"]


def test_check_once_openmetrics_on_stdout(
    clean_env: Path, served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --output the exposition goes to stdout; 40 days left is beyond the 30-day
    warning, so exit 0."""
    targets = clean_env / "targets.txt"
    targets.write_text(f"{served.server.endpoint}\n")
    code, out, _ = run_cli(
        ["check-once", "--targets", str(targets), "--format", "openmetrics"], capsys
    )
    assert code == 0
    assert only(parse(out)["trackssl_probe_success"], target=served.server.endpoint).value == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "openmetrics"], "--format openmetrics applies to --targets FILE"),
        (["--output", "x.prom"], "--output applies to --targets FILE"),
    ],
)
def test_api_mode_refuses_local_only_options(
    clean_env: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --targets (API mode) openmetrics and --output are usage errors (exit 3) with
    a line naming --targets, before any configuration is needed."""
    code, out, err = run_cli(["check-once", *args], capsys)
    assert code == 3
    assert out == ""
    assert message in err


# -- the example systemd units -----------------------------------------------------------


def test_textfile_unit_command_writes_the_collector_file(
    clean_env: Path, served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    """build/linux/trackssl-agent-textfile.service's own command line (its paths moved
    under tmp) writes a parseable trackssl.prom; the unit may write only that folder,
    treats the certificate findings 1 and 2 as success, and its timer starts it."""
    service = parse_unit(LINUX / "trackssl-agent-textfile.service")["Service"]
    argv = one(service, "ExecStart").split()
    assert argv[:2] == [EXE, "check-once"]
    targets_at = argv.index("--targets") + 1
    output_at = argv.index("--output") + 1
    output = Path(argv[output_at])
    assert output.name == "trackssl.prom"
    assert one(service, "ReadWritePaths") == str(output.parent)
    assert one(service, "SuccessExitStatus") == "1 2"
    timer = parse_unit(LINUX / "trackssl-agent-textfile.timer")["Timer"]
    assert one(timer, "Unit") == "trackssl-agent-textfile.service"

    (clean_env / "collector").mkdir()
    argv[targets_at] = str(clean_env / "targets.txt")
    argv[output_at] = str(clean_env / "collector" / output.name)
    Path(argv[targets_at]).write_text(f"{served.server.endpoint}\n")
    code, out, _ = run_cli(argv[1:], capsys)
    assert code == 0
    assert out == ""
    metrics = parse(Path(argv[output_at]).read_text())
    assert only(metrics["trackssl_probe_success"], target=served.server.endpoint).value == 1
