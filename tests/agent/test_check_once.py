"""``check-once`` and ``config``: local mode, API mode exit codes, the lock, dry run, JSON,
progress, SIGKILL survival, and the auth token kept out of every output and file."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests import tls_servers
from tests.api_server import (
    AUTH_TOKEN,
    HANG,
    UNAUTHORIZED,
    ApiServer,
    Reply,
    domain_entries,
)
from tests.cli_helpers import agent_environ, run_cli
from tests.listeners import closed_port
from tests.tls_servers import TcpServer
from trackssl_agent import log
from trackssl_agent.cloud.api import ApiClient
from trackssl_agent.engine.targets import read_targets_file
from trackssl_agent.state.lock import StateLock
from trackssl_agent.state.outbox import Outbox

ROOT = Path(__file__).resolve().parents[2]


def use(server: ApiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the agent at ``server``."""
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)


def subprocess_env(server: ApiServer | None, state: Path, **extra: str) -> dict[str, str]:
    """The environment of a ``python -m trackssl_agent`` child."""
    base = agent_environ(PYTHONPATH=str(ROOT), TRACKSSL_STATE_DIR=str(state), **extra)
    if server is not None:
        base.update(server.env())
    return base


# -- local mode --------------------------------------------------------------------------


def test_local_mode_needs_no_account(
    env: Path, good: list[TcpServer], capsys: pytest.CaptureFixture[str]
) -> None:
    """--targets probes a file's targets with no tokens and prints SPEC section 4 JSON."""
    targets = env / "targets.txt"
    targets.write_text(f"# mine\n127.0.0.1:{good[0].port}\n\n127.0.0.1:{closed_port()}  # off\n")
    code, out, err = run_cli(["check-once", "--targets", str(targets), "--json"], capsys)
    assert code == 2  # one target could not be probed
    results = json.loads(out)
    assert [r["ok"] for r in results] == [True, False]
    assert results[1]["error"]["kind"] == "refused"
    assert "targets done" not in err  # not a terminal: no progress


def test_local_mode_all_good_exits_0(
    env: Path, good: list[TcpServer], capsys: pytest.CaptureFixture[str]
) -> None:
    """Local mode uses the probe exit codes: 0 when all certificates are fine."""
    targets = env / "targets.txt"
    targets.write_text("".join(f"127.0.0.1:{s.port}\n" for s in good[:3]))
    code, out, _ = run_cli(["check-once", "--targets", str(targets)], capsys)
    assert code == 0
    assert out.count(" OK ") == 3


def test_local_mode_bad_target_line(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad line in the targets file exits 3 naming the file and line."""
    targets = env / "targets.txt"
    targets.write_text("ok.example\nbad host\n")
    code, _, err = run_cli(["check-once", "--targets", str(targets)], capsys)
    assert code == 3
    assert "targets.txt, line 2" in err


def test_example_targets_file_parses(capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped examples/targets.txt is a valid targets file: its active lines (the public
    endpoints) and, once uncommented, every commented-out example of a target form."""
    path = ROOT / "examples" / "targets.txt"
    lines = path.read_text().splitlines()
    active = read_targets_file(lines, source=str(path), starttls="auto")
    assert [target.text for target in active] == [
        "www.google.com", "imaps://imap.gmail.com", "submission://smtp.gmail.com",
    ]  # fmt: skip
    # A commented-out example is "# TARGET": one word after the mark (prose has spaces).
    examples = [line[2:] for line in lines if line.startswith("# ") and " " not in line[2:]]
    assert len(read_targets_file(examples, source=str(path), starttls="auto")) >= 5


# -- API mode ----------------------------------------------------------------------------


def test_api_cycle_exit_0_with_summary(
    env: Path,
    api_server: ApiServer,
    good: list[TcpServer],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A cycle that delivers everything exits 0 and prints the summary."""
    use(api_server, monkeypatch)
    api_server.domains = domain_entries({1: good[0].port, 2: closed_port()})
    code, out, _ = run_cli(["check-once", "--timeout", "2"], capsys)
    assert code == 0
    assert "domains 2, retrieved 1, failed 1 (refused 1), delivered 2, queued 0" in out
    assert sorted(api_server.posted_ids()) == [1, 2]


def test_api_results_not_delivered_exit_1(
    env: Path,
    api_server: ApiServer,
    good: list[TcpServer],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Results the API would not take make exit 1."""
    use(api_server, monkeypatch)
    api_server.domains = domain_entries({1: good[0].port})
    api_server.fail("certificate", Reply.error(422))
    code, out, err = run_cli(["check-once"], capsys)
    assert code == 1
    assert "rejected 1" in out
    assert "HTTP 422" in err


def test_api_auth_rejected_exit_2(
    env: Path,
    api_server: ApiServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """401 on the domain list exits 2 naming the auth token, without printing it."""
    use(api_server, monkeypatch)
    api_server.fail("domains", UNAUTHORIZED)
    code, out, err = run_cli(["check-once", "--log-level", "debug"], capsys)
    assert code == 2
    assert "rejected TRACKSSL_AUTH_TOKEN" in err
    assert AUTH_TOKEN not in out + err


def test_api_unreachable_exit_2(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An API that refuses connections fails the cycle with exit 2 (after bounded retries)."""
    monkeypatch.setenv("TRACKSSL_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("TRACKSSL_AUTH_TOKEN", AUTH_TOKEN)
    monkeypatch.setenv("TRACKSSL_AGENT_TOKEN", "agent-1")
    monkeypatch.setattr(ApiClient, "_delay", lambda _self, _attempt: 0.001)
    code, _, err = run_cli(["check-once"], capsys)
    assert code == 2
    assert "failed after 5 attempts" in err


def test_missing_tokens_exit_3(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """API mode without tokens is a configuration error."""
    code, _, err = run_cli(["check-once"], capsys)
    assert code == 3
    assert "TRACKSSL_AUTH_TOKEN and TRACKSSL_AGENT_TOKEN must be set" in err


def test_bad_config_file_exit_3(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad value in --config exits 3 naming the file, line and key."""
    conf = env / "agent.txt"
    conf.write_text("TRACKSSL_AGENT_TOKEN=a\n\nTRACKSSL_CONCURRENCY=many\n")
    code, _, err = run_cli(["check-once", "--config", str(conf)], capsys)
    assert code == 3
    assert "agent.txt, line 3: TRACKSSL_CONCURRENCY: expected a whole number" in err


def test_plain_http_to_a_remote_host_is_refused(
    env: Path, api_server: ApiServer, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """TRACKSSL_URL http:// to a non-loopback host exits 3 before any connection."""
    use(api_server, monkeypatch)
    monkeypatch.setenv("TRACKSSL_URL", "http://trackssl.invalid")
    code, _, err = run_cli(["check-once"], capsys)
    assert code == 3
    assert "loopback" in err
    assert api_server.requests == []


def test_second_agent_exits_3_naming_the_holder(
    env: Path,
    api_server: ApiServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With the state dir locked, check-once exits 3 and names the holder's pid."""
    use(api_server, monkeypatch)
    with StateLock(env / "state"):
        code, _, err = run_cli(["check-once"], capsys)
    assert code == 3
    assert f"pid {os.getpid()}" in err


def test_dry_run_posts_nothing_and_shows_results(
    env: Path,
    api_server: ApiServer,
    good: list[TcpServer],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--dry-run fetches and probes, shows the results, posts nothing."""
    use(api_server, monkeypatch)
    api_server.domains = domain_entries({1: good[0].port})
    code, out, _ = run_cli(["check-once", "--dry-run"], capsys)
    assert code == 0
    assert f"127.0.0.1:{good[0].port}  OK" in out
    assert "dry run (nothing posted)" in out
    assert api_server.posts() == []


def test_json_in_api_mode(
    env: Path,
    api_server: ApiServer,
    good: list[TcpServer],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--json prints SPEC section 4's array on stdout; the summary goes to stderr."""
    use(api_server, monkeypatch)
    api_server.domains = domain_entries({1: good[0].port, 2: good[1].port})
    code, out, err = run_cli(["check-once", "--json"], capsys)
    assert code == 0
    assert [r["ok"] for r in json.loads(out)] == [True, True]
    assert "delivered 2" in err


def test_starttls_option_needs_targets(
    env: Path, api_server: ApiServer, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """--starttls is for local mode; with the API each domain decides."""
    use(api_server, monkeypatch)
    code, _, err = run_cli(["check-once", "--starttls", "smtp"], capsys)
    assert code == 3
    assert "--targets" in err


def test_config_command_shows_sources_and_hides_the_token(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``config`` prints each key's value and origin, the auth token redacted."""
    (Path.cwd() / "environment.txt").write_text(
        f"TRACKSSL_AUTH_TOKEN={AUTH_TOKEN}\nTRACKSSL_TIMEOUT=3\n"
    )
    (Path.cwd() / "environment.txt").chmod(0o600)
    monkeypatch.setenv("TRACKSSL_CONCURRENCY", "8")
    code, out, _ = run_cli(["config"], capsys)
    assert code == 0
    assert AUTH_TOKEN not in out
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert "[REDACTED]" in lines["TRACKSSL_AUTH_TOKEN"]
    assert lines["TRACKSSL_TIMEOUT"].endswith("environment.txt, line 2]")
    assert lines["TRACKSSL_CONCURRENCY"].endswith("[$TRACKSSL_CONCURRENCY]")
    assert lines["TRACKSSL_URL"].endswith("[default]")


# -- subprocess runs ---------------------------------------------------------------------


def test_subprocess_50_targets_with_40_silent(
    api_server: ApiServer, good: list[TcpServer], silent: list[TcpServer], tmp_path: Path
) -> None:
    """Acceptance 2's scenario via ``python -m``: 40 silent + 10 good, --timeout 2, all 50
    posted, the silent ones waited on side by side (one after another: 80 s); the speed goal
    (< 15 s) is ``scripts/bench_probe.py --acceptance``'s."""
    api_server.domains = domain_entries({n: s.port for n, s in enumerate(good + silent)})
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "trackssl_agent", "check-once", "--timeout", "2"],
        env=subprocess_env(api_server, tmp_path / "state"),
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert elapsed < 40
    assert sorted(api_server.posted_ids()) == list(range(50))
    assert "retrieved 10, failed 40 (timeout 40), delivered 50, queued 0" in proc.stdout


def test_sigkill_with_unanswered_posts_loses_nothing(
    api_server: ApiServer, good: list[TcpServer], tmp_path: Path
) -> None:
    """Acceptance 3: killed while posts hang; the next cycle delivers every result, even
    though the domain list no longer names them."""
    ids = list(range(1, 9))
    api_server.domains = domain_entries({n: good[n % len(good)].port for n in ids})
    api_server.fail("certificate", HANG)
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trackssl_agent", "check-once"],
        env=subprocess_env(api_server, state), cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert api_server.wait_for(lambda: api_server.hung >= 4, timeout=20)
        # the posters are stuck; wait until every result is in the outbox
        deadline = time.monotonic() + 20
        while len(Outbox.open(state / "outbox")) < len(ids):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert api_server.posted == []
    api_server.clear()
    api_server.domains = []
    again = subprocess.run(
        [sys.executable, "-m", "trackssl_agent", "check-once"],
        env=subprocess_env(api_server, state), cwd=tmp_path,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert sorted(api_server.posted_ids()) == ids
    assert all(p["certificate"] for p in api_server.posted)


def test_token_appears_nowhere(
    api_server: ApiServer, good: list[TcpServer], tmp_path: Path
) -> None:
    """Acceptance 4: the token is in no output, debug log line, error or state-dir file."""
    api_server.domains = domain_entries({1: good[0].port, 2: closed_port()})
    api_server.script("certificate", Reply.error(422))
    api_server.fail("certificate", UNAUTHORIZED)
    state = tmp_path / "state"
    log_file = tmp_path / "logs" / "agent.log"
    conf = tmp_path / "environment.txt"
    conf.write_text(f"TRACKSSL_AUTH_TOKEN={AUTH_TOKEN}\nTRACKSSL_TIMEOTU=3\n")
    conf.chmod(0o644)  # readable by others, whatever the umask: the warning must not quote it
    env = subprocess_env(api_server, state, TRACKSSL_CONFIG=str(conf))
    del env["TRACKSSL_AUTH_TOKEN"]
    outputs: list[str] = []
    for args in (
        ["check-once", "--log-level", "debug", "--log-file", str(log_file)],
        ["check-once", "--log-level", "debug", "--log-format", "json"],
        ["check-once", "--log-level", "debug", "--json"],
        ["config"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "trackssl_agent", *args],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        outputs += [proc.stdout, proc.stderr]
    assert any("rejected TRACKSSL_AUTH_TOKEN" in o for o in outputs)
    assert any("readable by other users" in o for o in outputs)
    assert "did you mean TRACKSSL_TIMEOUT" in log_file.read_text()
    assert "DEBUG" in log_file.read_text()
    for text in outputs:
        assert AUTH_TOKEN not in text
    files = [p for p in [*state.rglob("*"), *log_file.parent.rglob("*")] if p.is_file()]
    assert any(p.name.startswith("seg-") for p in files)  # results wait in the outbox
    for path in files:
        assert AUTH_TOKEN.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("fmt", log.FORMATS)
def test_token_echoed_into_a_log_line_is_masked_in_every_log_format(
    fmt: str, api_server: ApiServer, good: list[TcpServer], tmp_path: Path
) -> None:
    """An API refusal that quotes the auth token reaches a log line (the dropped result's
    warning) in each --log-format, and the formatter masks it there."""
    api_server.domains = domain_entries({1: good[0].port})
    echo = json.dumps({"error": f"token {AUTH_TOKEN} may not post here"}).encode()
    api_server.script("certificate", Reply(422, echo))
    proc = subprocess.run(
        [sys.executable, "-m", "trackssl_agent", "check-once", "--log-level", "debug",
         "--log-format", fmt],
        env=subprocess_env(api_server, tmp_path / "state"), cwd=tmp_path,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr  # the refused result: the cycle did run
    assert AUTH_TOKEN not in proc.stdout + proc.stderr
    [line] = [x for x in proc.stderr.splitlines() if "refused the result for domain_id 1" in x]
    message = json.loads(line)["message"] if fmt == "json" else line
    assert "token [REDACTED] may not post here" in message  # the echo did reach the line


def test_progress_only_on_a_terminal(
    api_server: ApiServer, good: list[TcpServer], tmp_path: Path
) -> None:
    """On a TTY stderr shows ``done/total``; piped stderr shows no progress."""
    api_server.domains = domain_entries({n: good[n].port for n in range(3)})
    env = subprocess_env(api_server, tmp_path / "state")
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "trackssl_agent", "check-once"],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=slave,
    )  # fmt: skip
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    proc.wait(30)
    os.close(master)
    assert b"3/3 targets done, 0 failed" in seen
    piped = subprocess.run(
        [sys.executable, "-m", "trackssl_agent", "check-once"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert "targets done" not in piped.stderr


# -- messages that mislead (issue 22) ---------------------------------------------------


def check_once(
    state: Path, server: ApiServer | None, *args: str, cwd: Path, **extra: str
) -> subprocess.CompletedProcess[str]:
    """``python -m trackssl_agent check-once ARGS`` to its end; ``extra`` variables over
    the server's."""
    return subprocess.run(
        [sys.executable, "-m", "trackssl_agent", "check-once", *args],
        env={**subprocess_env(server, state), **extra}, cwd=cwd,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_skipped_entries_are_named_by_their_domain_id(
    api_server: ApiServer, tmp_path: Path
) -> None:
    """A bad domain-list entry is named by its domain_id, as the log names every other
    domain, not by its place in the list; an entry without a usable id by its number in
    the list, counted from 1, and saying so."""
    api_server.domains = [
        {"domain_id": 5, "hostname": "127.0.0.1", "port": str(closed_port())},
        {"domain_id": 9, "hostname": "127.0.0.1", "port": "0"},
        {"hostname": "127.0.0.1", "port": "443"},
    ]
    done = check_once(tmp_path / "state", api_server, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "domain_id 9 skipped: bad port '0'" in done.stderr
    assert "domain list entry number 3 (no usable domain_id) skipped: bad domain_id" in done.stderr
    assert "entry 1 skipped" not in done.stderr


def test_an_unknown_key_is_said_once(tmp_path: Path) -> None:
    """An unknown key in environment.txt is one warning; exported from the file into the
    environment as well (``set -a; . environment.txt``), still one."""
    (tmp_path / "environment.txt").write_text("TRACKSSL_CONCURENCY=4\n")
    targets = tmp_path / "targets.txt"
    targets.write_text(f"127.0.0.1:{closed_port()}\n")
    for extra in ({}, {"TRACKSSL_CONCURENCY": "4"}):
        done = check_once(
            tmp_path / "state", None, "--targets", str(targets), cwd=tmp_path, **extra
        )
        assert done.returncode == 2, done.stderr
        said = [line for line in done.stderr.splitlines() if "TRACKSSL_CONCURENCY" in line]
        assert len(said) == 1, done.stderr
        assert "did you mean TRACKSSL_CONCURRENCY?" in said[0]


def test_https_to_a_plain_http_api_says_so_in_the_agents_words(
    api_server: ApiServer, tmp_path: Path
) -> None:
    """TRACKSSL_URL https:// to an API that speaks plain http: one line saying the server
    does not speak TLS and the URL to set, without the library's words, and no retries
    (a wrong URL stays wrong)."""
    url = f"https://127.0.0.1:{api_server.port}"
    done = check_once(tmp_path / "state", api_server, cwd=tmp_path, TRACKSSL_URL=url)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"trackssl-agent: the server at {url} does not speak TLS: is it http? "
        f"Then set TRACKSSL_URL={api_server.url}"
    ]
    assert len(api_server.requests) == 0  # TLS never got as far as a request


def test_an_api_url_with_a_path_is_refused_before_any_request(
    api_server: ApiServer, tmp_path: Path
) -> None:
    """TRACKSSL_URL with a path (the API's own /api/v1 pasted in) is a configuration error
    saying so, not a 404 that blames the agent token."""
    done = check_once(
        tmp_path / "state", api_server, cwd=tmp_path, TRACKSSL_URL=f"{api_server.url}/api/v1"
    )
    assert done.returncode == 3
    [line] = done.stderr.splitlines()
    assert "environment variable TRACKSSL_URL: expected a base URL without a path" in line
    assert "TRACKSSL_AGENT_TOKEN" not in line
    assert api_server.requests == []


@pytest.mark.parametrize("kind", ["folder", "missing"])
def test_a_targets_path_that_is_no_file_gets_the_agents_line(tmp_path: Path, kind: str) -> None:
    """--targets naming a folder or nothing: exit 3 and one line of the agent's, never
    click's usage block."""
    path = tmp_path / "targets"
    if kind == "folder":
        path.mkdir()
    done = check_once(tmp_path / "state", None, "--targets", str(path), cwd=tmp_path)
    assert done.returncode == 3
    reason = "it is a folder; name a file" if kind == "folder" else "no such file"
    assert done.stderr == f"trackssl-agent: --targets {path}: cannot read it: {reason}\n"


def test_an_output_folder_gets_the_agents_line_before_any_probe(tmp_path: Path) -> None:
    """--output naming a folder: exit 3 and one line of the agent's before anything is
    probed, never click's usage block."""
    targets = tmp_path / "targets.txt"
    with tls_servers.running(tls_servers.silent_server()) as server:
        targets.write_text(f"{server.endpoint}\n")
        done = check_once(
            tmp_path / "state", None, "--targets", str(targets), "--output", str(tmp_path),
            cwd=tmp_path,
        )  # fmt: skip
        assert server.accepted_before_now() == 0
    assert done.returncode == 3
    assert done.stderr == (
        f"trackssl-agent: --output {tmp_path}: it is a folder; name a file (in it, or elsewhere)\n"
    )


def test_every_bad_line_of_a_targets_file_is_reported(tmp_path: Path) -> None:
    """A targets file with 13 bad lines among good ones: the first 10 named, one line each,
    then one line counting all 13; nothing probed, exit 3."""
    targets = tmp_path / "targets.txt"
    good = f"127.0.0.1:{closed_port()}"
    lines = [good, "bad host", *(f"h{n}.example:0" for n in range(12)), good]
    targets.write_text("\n".join(lines) + "\n")
    done = check_once(tmp_path / "state", None, "--targets", str(targets), cwd=tmp_path)
    assert done.returncode == 3
    said = done.stderr.splitlines()
    assert said[0] == (
        f"trackssl-agent: {targets}, line 2: invalid target 'bad host': it contains spaces, "
        "control or invisible characters"
    )
    assert [line.split(", line ")[1].split(":")[0] for line in said[:10]] == [
        str(n) for n in range(2, 12)
    ]
    assert said[10:] == [
        f"trackssl-agent: {targets}: 13 lines are not valid targets (the first 10 above); "
        "nothing was probed: correct them and run again"
    ]


def test_progress_is_redrawn_while_slow_targets_run_and_at_the_end(tmp_path: Path) -> None:
    """On a terminal, three targets that fail at once and three that hang: the line shows
    3/6 while the three hang (no count dropped for good), then 6/6 as the last thing drawn."""
    silent = tls_servers.silent_server()
    targets = tmp_path / "targets.txt"
    ports = [closed_port() for _ in range(3)] + [silent.port] * 3
    targets.write_text("".join(f"127.0.0.1:{port}\n" for port in ports))
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "trackssl_agent", "check-once", "--targets", str(targets),
         "--json", "--timeout", "120"],
        env=subprocess_env(None, tmp_path / "state"), cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=slave,
    )  # fmt: skip
    os.close(slave)
    seen = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                return
            if not chunk:
                return
            seen.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while b"3/6 targets done, 3 failed" not in seen and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b"3/6 targets done, 3 failed" in seen, bytes(seen)
        while len(silent.connections) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)  # the three hanging probes are connected before they end
    finally:
        silent.close()  # the three hanging probes end now
    assert proc.wait(60) == 2
    reader.join(10)
    os.close(master)
    drawn = bytes(seen).replace(b"\r\n", b"\n").split(b"\n")[0].split(b"\r")
    assert drawn[-1] == b"6/6 targets done, 6 failed", bytes(seen)


def test_a_refused_api_is_said_in_the_agents_words(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An API port that refuses connections: each retry and the final line say "connection
    refused by HOST:PORT" and what to check, never the library's "[Errno 111]"."""
    port = closed_port()
    monkeypatch.setenv("TRACKSSL_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("TRACKSSL_AUTH_TOKEN", AUTH_TOKEN)
    monkeypatch.setenv("TRACKSSL_AGENT_TOKEN", "agent-1")
    monkeypatch.setattr(ApiClient, "_delay", lambda _self, _attempt: 0.001)
    code, _, err = run_cli(["check-once"], capsys)
    assert code == 2
    assert "Errno" not in err
    assert err.count(f"domain list failed (connection refused by 127.0.0.1:{port}); retry") == 4
    assert err.splitlines()[-1] == (
        "trackssl-agent: the domain list failed after 5 attempts in 0 s: connection refused "
        f"by 127.0.0.1:{port} (http://127.0.0.1:{port}); is the API running there, and is "
        "TRACKSSL_URL right?"
    )
