"""Judged output of ``probe`` and local mode (SPEC section 4a): the text's first and problems
lines, the summary, ``--format nagios``, OpenMetrics status, results streamed in input order,
Ctrl-C, targets from stdin; and the API path, which judges nothing and never imports the
judging modules."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests import tls_servers
from tests.api_server import ApiServer, domain_entries
from tests.cli_helpers import run_cli
from tests.listeners import closed_port
from tests.render.test_openmetrics import only, parse
from tests.verdict_servers import World

ROOT = Path(__file__).resolve().parents[2]
NAGIOS = re.compile(r"^TRACKSSL (OK|WARNING|CRITICAL) - (.+) \| (.+)$")


def endpoint(world: World, name: str) -> str:
    """The TARGET of the server presenting chain ``name``."""
    return f"127.0.0.1:{world.ports[name]}"


def days_left(world: World, name: str) -> int:
    """Whole days until the leaf of ``name`` expires (negative once expired)."""
    left = world.chains[name].leaf.not_valid_after_utc - datetime.now(UTC)
    return int(left.total_seconds() // 86400)


def test_text_first_line_is_target_status_why(
    store: Path, world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each target's text starts ``TARGET  STATUS  WHY``, then a problems line listing
    every problem, notes included; OK says how many days are left."""
    code, out, _err = run_cli(
        ["probe", endpoint(world, "expired"), endpoint(world, "private")], capsys
    )
    blocks = out.split("\n\n")
    expired, private = blocks[0].splitlines(), blocks[1].splitlines()
    assert code == 2
    assert re.fullmatch(
        rf"127\.0\.0\.1:{world.ports['expired']}  CRITICAL  expired \d{{4}}-\d\d-\d\d, 4 days ago",
        expired[0],
    )
    assert expired[1].startswith("  problems    expired (critical): expired ")
    assert (
        private[0] == f"{endpoint(world, 'private')}  OK  {days_left(world, 'private')} days left"
    )
    assert private[1].startswith("  problems    untrusted (note): issuer 'CN=private Test Root CA'")


def test_summary_counts_statuses_and_kinds(
    store: Path, world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """The last line counts targets by status, then what made them so."""
    refused = f"127.0.0.1:{closed_port()}"
    targets = [endpoint(world, n) for n in ("good", "warn", "expired", "private")] + [refused]
    code, out, _err = run_cli(["probe", *targets], capsys)
    assert code == 2
    assert out.endswith(
        "\n\nsummary: 5 targets, 2 OK, 1 WARNING, 2 CRITICAL; "
        "1 failed, 1 expired, 1 expiring, 1 untrusted\n"
    )


def test_nagios_status_line_and_perfdata(
    store: Path, world: World, env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--format nagios``: the worst status, the worst target and why, perfdata with the
    fewest days left and the thresholds and counts; then one line per target not OK."""
    targets = env / "targets.txt"
    targets.write_text("".join(f"{endpoint(world, n)}\n" for n in ("good", "warn", "expired")))
    code, out, _err = run_cli(
        ["check-once", "--targets", str(targets), "--format", "nagios"], capsys
    )
    first, *rest = out.splitlines()
    match = NAGIOS.match(first)
    assert match is not None, first
    status, text, perfdata = match.groups()
    assert (code, status) == (2, "CRITICAL")
    assert text.startswith(f"{endpoint(world, 'expired')}: expired ")
    values = dict(item.split("=", 1) for item in perfdata.split())
    assert values == {
        "days": f"{days_left(world, 'expired')};30;7", "ok": "1", "warning": "1", "critical": "1"
    }  # fmt: skip
    assert [line.split("  ")[:2] for line in rest] == [
        [endpoint(world, "warn"), "WARNING"], [endpoint(world, "expired"), "CRITICAL"]
    ]  # fmt: skip


def test_nagios_all_ok(store: Path, world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """All OK: status OK, exit 0, the fewest days left named, no further lines."""
    code, out, _err = run_cli(
        ["probe", "--format", "nagios", endpoint(world, "good"), endpoint(world, "private")], capsys
    )
    left = days_left(world, "good")
    assert code == 0
    assert out == (
        f"TRACKSSL OK - 2 targets OK, fewest days left {left} ({endpoint(world, 'good')}) "
        f"| days={left};30;7 ok=2 warning=0 critical=0\n"
    )


def test_openmetrics_status_and_chain_verified(
    store: Path, world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """Per target: trackssl_probe_status 0/1/2 and trackssl_chain_verified 1 or 0."""
    refused = f"127.0.0.1:{closed_port()}"
    names = ("good", "warn", "private")
    code, out, _err = run_cli(
        ["probe", "--format", "openmetrics", *(endpoint(world, n) for n in names), refused], capsys
    )
    metrics = parse(out)
    status = {s.labels["target"]: s.value for s in metrics["trackssl_probe_status"]}
    verified = {s.labels["target"]: s.value for s in metrics["trackssl_chain_verified"]}
    good, warn, private = (endpoint(world, n) for n in names)
    assert code == 2
    assert status == {good: 0, warn: 1, private: 0, refused: 2}
    assert verified == {good: 1, warn: 1, private: 0, refused: 0}
    assert only(metrics["trackssl_probe_status"], target=warn).value == 1


def _agent(*args: str, bundle: Path, cwd: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACKSSL_", "SSL_CERT_"))}
    env.update(PYTHONPATH=str(ROOT), SSL_CERT_FILE=str(bundle))
    return subprocess.Popen(
        [sys.executable, "-m", "trackssl_agent", *args], cwd=cwd, env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip


def test_results_stream_in_input_order_ahead_of_a_slow_target(
    store: Path, world: World, env: Path
) -> None:
    """A target's text is written once every target before it is done: the first one while
    a silent second one still holds the run, the third only after the second."""
    silent = tls_servers.silent_server()
    lines: list[str] = []
    try:
        targets = [endpoint(world, "good"), silent.endpoint, endpoint(world, "warn")]
        proc = _agent("probe", "--timeout", "280", *targets, bundle=store, cwd=env)
        assert proc.stdout is not None
        stdout = proc.stdout
        reader = threading.Thread(target=lambda: lines.append(stdout.readline().decode()))
        reader.start()
        # The silent target holds the run for 280 s unless closed below: the first target's
        # line arrives long before that only if it is streamed, not written at the end.
        reader.join(timeout=60)
        assert lines, "the first result was not written while the second was pending"
        assert proc.poll() is None
    finally:
        silent.close()  # the second target now fails at once, and the run ends
    first = lines[0]
    assert first.startswith(f"{endpoint(world, 'good')}  OK  ")
    out, _err = proc.communicate(timeout=60)
    text = first + out.decode()
    heads = [block.splitlines()[0] for block in text.split("\n\n")]
    assert [h.split("  ")[:2] for h in heads[:3]] == [
        [endpoint(world, "good"), "OK"],
        [silent.endpoint, "CRITICAL"],
        [endpoint(world, "warn"), "WARNING"],
    ]
    assert heads[3].startswith("summary: 3 targets, 1 OK, 1 WARNING, 1 CRITICAL")
    assert proc.returncode == 2


def test_ctrl_c_prints_what_finished_and_the_summary(store: Path, world: World, env: Path) -> None:
    """SIGINT to the process group (a terminal's Ctrl-C) in local mode: the finished results,
    the summary with the unfinished target counted as not probed, exit 130."""
    silent = tls_servers.silent_server()
    try:
        targets = env / "targets.txt"
        targets.write_text(f"{endpoint(world, 'good')}\n{silent.endpoint}\n")
        proc = _agent(
            "check-once", "--targets", str(targets), "--timeout", "60", bundle=store, cwd=env
        )
        assert proc.stdout is not None
        first = proc.stdout.readline().decode()
        assert first.startswith(f"{endpoint(world, 'good')}  OK  ")
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        silent.close()
    lines = (first + out.decode()).splitlines()
    assert proc.returncode == 130, err
    assert (
        lines[-1] == "summary: 2 targets, 1 OK, 0 WARNING, 0 CRITICAL, 1 not probed (interrupted)"
    )
    assert b"Traceback" not in err


def test_ctrl_c_with_json_keeps_the_document_whole(store: Path, world: World, env: Path) -> None:
    """Ctrl-C with --json: stdout is still one JSON array (of what finished), the summary
    line goes to stderr, exit 130."""
    silent = tls_servers.silent_server()
    try:
        targets = env / "targets.txt"
        targets.write_text(f"{endpoint(world, 'good')}\n{silent.endpoint}\n")
        proc = _agent(
            "check-once", "--targets", str(targets), "--json", "--timeout", "60",
            bundle=store, cwd=env,
        )  # fmt: skip
        # Probing has begun once the silent target holds a connection.
        waited = threading.Event()
        while not silent.connections and not waited.wait(0.05):
            assert proc.poll() is None
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        silent.close()
    document = json.loads(out)
    assert proc.returncode == 130, err
    assert {d["target"] for d in document} <= {endpoint(world, "good")}
    summary = err.decode().splitlines()[-1]
    assert summary.startswith("summary: 2 targets, ")
    assert "not probed (interrupted)" in summary


def test_targets_from_stdin(store: Path, world: World, env: Path) -> None:
    """``--targets -`` reads the targets from standard input."""
    proc = _agent("check-once", "--targets", "-", "--json", bundle=store, cwd=env)
    text = f"# from a pipe\n{endpoint(world, 'good')}\n{endpoint(world, 'warn')}\n"
    out, err = proc.communicate(text.encode(), timeout=60)
    document = json.loads(out)
    assert proc.returncode == 1, err
    assert [(d["target"], d["status"]) for d in document] == [
        (endpoint(world, "good"), "OK"), (endpoint(world, "warn"), "WARNING")
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "nagios"], "--format nagios applies to --targets FILE"),
        (["--verify"], "--verify and --ca-file apply to --targets"),
    ],
)
def test_api_mode_refuses_judging_options(
    env: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the API the cloud judges: nagios and --verify are usage errors (exit 3)."""
    code, out, err = run_cli(["check-once", *args], capsys)
    assert (code, out) == (3, "")
    assert message in err


def _api_check_once(api_server: ApiServer, env: Path, *args: str) -> tuple[str, str, set[str]]:
    """``check-once ARGS`` with the API in a fresh interpreter: stdout, stderr and the
    modules it imported."""
    code = (
        "import sys\n"
        "from trackssl_agent.cli import main\n"
        f"try:\n    main(['check-once', *{list(args)!r}])\n"
        "except SystemExit as exc:\n    print('EXIT', exc.code, file=sys.stderr)\n"
        "print('MODULES', ' '.join(sorted(sys.modules)), file=sys.stderr)"
    )
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKSSL_")}
    child_env.update(api_server.env(), PYTHONPATH=str(ROOT), TRACKSSL_STATE_DIR=str(env / "state"))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env=child_env, cwd=env, check=False,
    )  # fmt: skip
    err, modules = done.stderr.split("MODULES", 1)
    return done.stdout, err, set(modules.split())


JUDGING = {
    f"trackssl_agent.{name}"
    for name in (
        "verdict.judge",
        "verdict.trust_store",
        "verdict.chain_check",
        "verdict.local_mode",
        "render.judged_output",
        "render.nagios",
    )
}


def test_the_api_cycle_never_imports_judging_or_cryptography(
    env: Path, api_server: ApiServer, world: World
) -> None:
    """check-once with the API (run's cycle) posts what it retrieved and loads neither the
    judging modules nor cryptography."""
    api_server.domains = domain_entries({1: world.ports["expired"]})
    _out, err, modules = _api_check_once(api_server, env)
    assert "EXIT 0" in err
    assert api_server.posted_ids() == [1]
    assert not (JUDGING | {"cryptography"}) & modules


def test_api_mode_json_is_not_judged(env: Path, api_server: ApiServer, world: World) -> None:
    """check-once --dry-run --json with the API gives section 4's objects without status or
    problems: the cloud judges, and the judging modules are never imported."""
    api_server.domains = domain_entries({1: world.ports["expired"]})
    out, err, modules = _api_check_once(api_server, env, "--dry-run", "--json")
    (document,) = json.loads(out)
    assert "EXIT 0" in err
    assert document["target"] == f"127.0.0.1:{world.ports['expired']}"
    assert "status" not in document
    assert "problems" not in document
    assert not JUDGING & modules
