"""``doctor`` against the loopback API: every line ok on a working setup, and the one
failing check named, with its fix and exit code, for each thing a locked-down host gets
wrong (tokens, proxy, inspecting CA, a hanging API, the state dir, the token file). The
auth token never appears in any output, text or JSON."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api_server import AUTH_TOKEN, HANG, ApiServer, domain_entries
from tests.as_nobody import NOBODY, NobodyPython
from tests.certs import Chain
from tests.cli_helpers import agent_environ, console_script, run_cli
from tests.cloud.test_api import ConnectProxy
from tests.privileges import need_root
from tests.shared_dirs import shared_dir
from tests.state.test_statedir import tmpfs
from tests.tls_servers import TcpServer
from tests.verdict_servers import World
from trackssl_agent.doctor import checkup
from trackssl_agent.doctor.values import Check, Status

ROOT = Path(__file__).resolve().parents[2]
WRONG_TOKEN = "tsk_live_WRONGwrongWRONG1234"  # noqa: S105 - a test-only token


def use(server: ApiServer, monkeypatch: pytest.MonkeyPatch, **extra: str) -> None:
    """Point the environment at ``server`` with three loopback domains."""
    server.domains = domain_entries({1: 1, 2: 2, 3: 3})
    for key, value in {**server.env(), **extra}.items():
        monkeypatch.setenv(key, value)


def doctor_cli(
    args: list[str], capsys: pytest.CaptureFixture[str], *tokens: str
) -> tuple[int, str, list[dict[str, str]]]:
    """``doctor ARGS`` as text and as --json: the code, the text, the JSON checks; fails if
    any of ``tokens`` (and the test auth token) shows up in any output or the codes differ."""
    code, out, err = run_cli(["doctor", *args], capsys)
    json_code, json_out, json_err = run_cli(["doctor", "--json", *args], capsys)
    for token in {AUTH_TOKEN, *tokens}:
        assert token not in out + err + json_out + json_err
    assert code == json_code, out + json_out
    checks = json.loads(json_out)
    assert [set(check) for check in checks] == [{"check", "status", "detail", "fix"}] * len(checks)
    return code, out + err, checks


def line(out: str, name: str) -> str:
    """The single output line of check ``name`` (its status first)."""
    found = [row for row in out.splitlines() if row[6:].startswith(name + " ")]
    assert len(found) == 1, out
    return found[0]


def test_everything_ok_exit_0_domain_count_shown(
    env: Path,
    api_server: ApiServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A working setup: every check ok, exit 0, the domain count shown, every
    section present in order."""
    use(api_server, monkeypatch)
    code, out, checks = doctor_cli([], capsys)
    assert code == 0, out
    assert [row[:4] for row in out.splitlines()[:-1]] == ["ok  "] * (len(checks))
    assert "3 domains" in line(out, "auth")
    assert "length" not in out and "29 characters" in out  # the token's length, not it
    names = [check["check"] for check in checks]
    order = ["configuration", "tokens", "api dns", "api proxy", "api tcp", "api tls",
             "api http", "auth", "clock", "state dir", "free space", "engine"]  # fmt: skip
    assert [n for n in dict.fromkeys(names) if not n.startswith("target")] == order
    assert sum(n.startswith("target 127.0.0.1") for n in names) == 3
    assert out.rstrip().splitlines()[-1].endswith("0 FAIL")


def test_wrong_auth_token_fails_naming_it_exit_2(
    env: Path,
    api_server: ApiServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A rejected API key: the auth line FAILs naming TRACKSSL_AUTH_TOKEN with its fix; exit 2."""
    use(api_server, monkeypatch, TRACKSSL_AUTH_TOKEN=WRONG_TOKEN)
    code, out, _checks = doctor_cli([], capsys, WRONG_TOKEN)
    assert code == 2
    auth = line(out, "auth")
    assert auth.startswith("FAIL") and "TRACKSSL_AUTH_TOKEN" in auth and "HTTP 401" in auth
    assert "fix: copy the API key" in auth


def test_unknown_agent_token_fails_naming_it_exit_2(
    env: Path,
    api_server: ApiServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An agent token the API does not know (404): FAIL naming TRACKSSL_AGENT_TOKEN; exit 2."""
    use(api_server, monkeypatch, TRACKSSL_AGENT_TOKEN="agent-unknown")  # noqa: S106 - a public id
    code, out, _checks = doctor_cli([], capsys)
    assert code == 2
    auth = line(out, "auth")
    assert auth.startswith("FAIL") and "TRACKSSL_AGENT_TOKEN" in auth and "HTTP 404" in auth


def test_api_behind_the_connect_proxy(
    env: Path,
    https_api_server: ApiServer,
    api_chain: Chain,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """HTTPS_PROXY: the proxy line names it and its tunnel, TLS verifies through it, the
    domain list comes through it too; exit 0."""
    proxy = ConnectProxy()
    try:
        use(
            https_api_server, monkeypatch, TRACKSSL_CA_BUNDLE=str(api_chain.ca_file),
            HTTPS_PROXY=f"http://127.0.0.1:{proxy.port}",
        )  # fmt: skip
        code, out, _checks = doctor_cli([], capsys)
    finally:
        proxy.close()
    assert code == 0, out
    assert f"http://127.0.0.1:{proxy.port} opened a tunnel to 127.0.0.1" in line(out, "api proxy")
    assert "verified against the system trust store and" in line(out, "api tls")
    # Per run: the doctor's own tunnel and the client's; text and JSON runs.
    assert proxy.tunnels == [f"127.0.0.1:{https_api_server.port}"] * 4


def test_private_ca_fails_naming_the_issuer_then_ok_with_the_bundle(
    env: Path,
    https_api_server: ApiServer,
    api_chain: Chain,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An API certificate from a private CA (as a TLS-inspecting proxy presents): the TLS
    line FAILs naming the presented issuer and TRACKSSL_CA_BUNDLE; with the bundle, exit 0."""
    use(https_api_server, monkeypatch)
    code, out, _checks = doctor_cli([], capsys)
    assert code == 2
    tls = line(out, "api tls")
    assert tls.startswith("FAIL") and "api Test Issuing CA" in tls, tls
    assert "TRACKSSL_CA_BUNDLE" in tls
    assert line(out, "auth").startswith("FAIL")
    assert https_api_server.requests == []  # nothing was sent over an unverified connection
    monkeypatch.setenv("TRACKSSL_CA_BUNDLE", str(api_chain.ca_file))
    code, out, _checks = doctor_cli([], capsys)
    assert code == 0, out
    assert "3 domains" in line(out, "auth")


def test_hanging_api_fails_within_30_seconds(env: Path, api_server: ApiServer) -> None:
    """An API that accepts the domain-list request and never answers: the real process
    FAILs the auth line and exits 2 within 30 s."""
    api_server.domains = domain_entries({1: 1})
    api_server.fail("domains", HANG)
    environ = agent_environ(**api_server.env(), TRACKSSL_STATE_DIR=str(env / "state"))
    started = time.monotonic()
    done = subprocess.run(
        [str(console_script()), "doctor"], env=environ, cwd=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert elapsed < 30, elapsed
    assert done.returncode == 2, done.stdout + done.stderr
    auth = line(done.stdout, "auth")
    assert auth.startswith("FAIL") and "no complete answer" in auth, auth
    assert AUTH_TOKEN not in done.stdout + done.stderr


def test_read_only_state_dir_fails(
    env: Path,
    api_server: ApiServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A state dir on a read-only mount: the state dir line FAILs saying so; exit 2."""
    use(api_server, monkeypatch)
    with tmpfs(env / "mnt") as mnt:
        state = mnt / "state"
        state.mkdir(mode=0o700)
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        monkeypatch.setenv("TRACKSSL_STATE_DIR", str(state))
        code, out, _checks = doctor_cli([], capsys)
    assert code == 2
    failed = [row for row in out.splitlines() if row.startswith("FAIL")]
    assert len(failed) == 1 and "state dir" in failed[0] and "read-only" in failed[0], out


@pytest.fixture
def lock_holder(env: Path) -> Iterator[int]:
    """A second process holding the state dir's lock; yields its pid."""
    state = env / "state"
    code = (
        "import sys, time\nfrom pathlib import Path\n"
        "from trackssl_agent.state.lock import StateLock\n"
        f"lock = StateLock(Path({str(state)!r}))\nlock.acquire()\nprint('held', flush=True)\n"
        "time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_held_lock_names_the_holder(
    env: Path,
    lock_holder: int,
    api_server: ApiServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A lock held by a live agent: warn naming its pid (a running service is normal); exit 0."""
    use(api_server, monkeypatch)
    code, out, _checks = doctor_cli([], capsys)
    assert code == 0, out
    lock = line(out, "lock")
    assert lock.startswith("warn") and f"held by pid {lock_holder}" in lock


def test_token_file_readable_by_others_warns(
    env: Path,
    api_server: ApiServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """environment.txt holding the auth token with mode 0644: a token-file warn with the
    chmod to run, exit 0, the token nowhere; after chmod 600 the line is ok."""
    use(api_server, monkeypatch)
    monkeypatch.delenv("TRACKSSL_AUTH_TOKEN")
    file = env / "environment.txt"
    file.write_text(f"TRACKSSL_AUTH_TOKEN={AUTH_TOKEN}\n")
    file.chmod(0o644)
    code, out, _checks = doctor_cli(["--config", str(file)], capsys)
    assert code == 0, out
    warned = line(out, "token file")
    assert warned.startswith("warn") and f"fix: run: chmod 600 {file}" in warned
    file.chmod(0o600)
    _code, out, _checks = doctor_cli(["--config", str(file)], capsys)
    assert line(out, "token file").startswith("ok")


def test_unreadable_configuration_exit_3(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A configuration file that is not text: FAIL, exit 3, and the engine line still shown."""
    file = env / "environment.txt"
    file.write_bytes(b"TRACKSSL_URL=\xff\xfe\n")
    code, out, checks = doctor_cli(["--config", str(file)], capsys)
    assert code == 3
    assert line(out, "configuration").startswith("FAIL")
    assert [c["check"] for c in checks] == ["configuration", "engine"]


def test_invalid_value_fails_exit_2(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A readable configuration with a bad value: FAIL naming it, exit 2 (a failed check)."""
    monkeypatch.setenv("TRACKSSL_TIMEOUT", "soon")
    code, out, _checks = doctor_cli([], capsys)
    assert code == 2
    assert "TRACKSSL_TIMEOUT" in line(out, "configuration")


def test_missing_tokens_fail_and_the_api_is_still_checked(
    env: Path, api_server: ApiServer, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """No tokens: both token lines FAIL, the connection lines are still ok; exit 2."""
    monkeypatch.setenv("TRACKSSL_URL", api_server.url)
    code, out, checks = doctor_cli([], capsys)
    assert code == 2
    assert [c["status"] for c in checks if c["check"] == "tokens"] == ["FAIL", "FAIL"]
    assert line(out, "api http").startswith("ok")


def test_render_text_puts_the_fix_on_warn_and_fail_only() -> None:
    """The text form: the fix follows a warn or FAIL, never an ok, after "; " or, when the
    detail ends a sentence (a question included), after a space; a count closes it."""
    text = checkup.render_text(
        [
            Check("a", Status.OK, "fine", "ignored"),
            Check("b", Status.WARN, "meh", "do x"),
            Check("c", Status.FAIL, "bad\x1b[2J", "do y"),
            Check("d", Status.FAIL, "refused; is it running on this port?", "start it"),
        ]
    )
    assert text.splitlines() == [
        "ok    a  fine", "warn  b  meh; fix: do x", "FAIL  c  bad\\x1b[2J; fix: do y",
        "FAIL  d  refused; is it running on this port? fix: start it",
        "doctor: 1 ok, 1 warn, 2 FAIL",
    ]  # fmt: skip
    assert checkup.Diagnosis((Check("b", Status.WARN, "meh"),)).exit_code == 0


def test_probe_option_probes_the_sample_only(
    env: Path, api_server: ApiServer, good: list[TcpServer], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """``--probe --targets-sample 1`` probes the first domain only, and only with --probe."""
    use(api_server, monkeypatch)
    api_server.domains = domain_entries({1: good[0].port, 2: good[1].port})
    code, out, _ = run_cli(["doctor", "--targets-sample", "1"], capsys)
    assert code == 0 and "probe " not in out, out
    code, out, _ = run_cli(["doctor", "--probe", "--targets-sample", "1"], capsys)
    assert code == 0, out
    assert "TLSv1.3" in line(out, f"probe 127.0.0.1:{good[0].port}")
    assert f"127.0.0.1:{good[1].port}" not in out


def test_probe_line_says_expired_for_a_past_date(
    env: Path, api_server: ApiServer, world: World, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """``doctor --probe`` uses the verdict's words: a leaf past its date "expired", never
    "expires"."""
    use(api_server, monkeypatch)
    api_server.domains = domain_entries({1: world.ports["expired"], 2: world.ports["good"]})
    _code, out, _ = run_cli(["doctor", "--probe", "--targets-sample", "2"], capsys)
    expired = line(out, f"probe 127.0.0.1:{world.ports['expired']}")
    good = line(out, f"probe 127.0.0.1:{world.ports['good']}")
    assert f"leaf expired {world.chains['expired'].leaf.not_valid_after_utc:%Y-%m-%d}" in expired
    assert "expires" not in expired
    assert f"leaf expires {world.chains['good'].leaf.not_valid_after_utc:%Y-%m-%d}" in good


# -- messages that mislead (issue 22) ---------------------------------------------------


def doctor_process(*args: str, cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    """``python -m trackssl_agent doctor ARGS`` with a clean environment plus ``extra``."""
    return subprocess.run(
        [sys.executable, "-m", "trackssl_agent", "doctor", *args],
        env=agent_environ(PYTHONPATH=str(ROOT), **extra), cwd=cwd,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_a_config_that_is_a_folder_is_a_fail_line_not_a_usage_block(tmp_path: Path) -> None:
    """--config or TRACKSSL_CONFIG naming a folder: the configuration line FAILs naming it
    (exit 3, the engine line still shown), never click's usage block."""
    folder = tmp_path / "conf"
    folder.mkdir()
    by_option = doctor_process("--config", str(folder), cwd=tmp_path)
    by_variable = doctor_process(cwd=tmp_path, TRACKSSL_CONFIG=str(folder))
    for done, given in (
        (by_option, f"--config {folder}"),
        (by_variable, f"$TRACKSSL_CONFIG={folder}"),
    ):
        assert done.returncode == 3
        assert "Usage:" not in done.stdout + done.stderr
        assert line(done.stdout, "configuration") == (
            f"FAIL  configuration  {given}: it is a folder; "
            "fix: name the environment.txt file itself"
        )
        assert line(done.stdout, "engine").startswith("ok")


def test_a_missing_config_is_not_told_to_make_it_readable(tmp_path: Path) -> None:
    """TRACKSSL_CONFIG naming no file: the line says so and asks for an existing file; it
    does not ask to make a file that is not there readable."""
    missing = tmp_path / "environment.txt"
    done = doctor_process(cwd=tmp_path, TRACKSSL_CONFIG=str(missing))
    assert done.returncode == 3
    assert line(done.stdout, "configuration") == (
        f"FAIL  configuration  $TRACKSSL_CONFIG={missing}: no such file; "
        "fix: name an existing environment.txt"
    )
    assert "readable" not in done.stdout


@pytest.fixture(scope="module")
def nobody() -> NobodyPython:
    """The agent's code runnable as nobody, wherever the clone and its venv are."""
    need_root("runs the agent as nobody")
    return NobodyPython.prepare()


def test_a_file_the_user_may_not_read_is_named_with_who_cannot(nobody: NobodyPython) -> None:
    """A root-only (0600) file that nobody names: doctor (by --config or TRACKSSL_CONFIG)
    FAILs naming the path and the user, check-once says the same in one line, and so does
    --targets; never click's usage block, never only "Permission denied"."""
    base = shared_dir("nobody-unreadable")
    secret = base / "agent.txt"
    secret.write_text("TRACKSSL_TIMEOUT=5\n")
    secret.chmod(0o600)
    targets = base / "targets.txt"
    targets.write_text("127.0.0.1:443\n")
    targets.chmod(0o600)
    why = f"cannot read it: nobody (uid {NOBODY}) may not read it"
    fix = "change its permissions or run as its owner"

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            nobody.agent(*args), env=agent_environ(**extra), cwd=base,
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    for done in (
        run("doctor", "--config", str(secret)),
        run("doctor", TRACKSSL_CONFIG=str(secret)),
    ):
        assert done.returncode == 3, done.stdout + done.stderr
        assert "Usage:" not in done.stdout + done.stderr
        assert line(done.stdout, "configuration") == (
            f"FAIL  configuration  {secret}: {why}; fix: {fix}"
        )
    checked = run("check-once", TRACKSSL_CONFIG=str(secret))
    assert (checked.returncode, checked.stderr) == (3, f"trackssl-agent: {secret}: {why}; {fix}\n")
    local = run("check-once", "--targets", str(targets))
    assert (local.returncode, local.stderr) == (
        3, f"trackssl-agent: --targets {targets}: {why}; {fix}\n",
    )  # fmt: skip


def test_a_held_lock_is_told_what_check_once_really_does(
    env: Path,
    lock_holder: int,
    api_server: ApiServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """While an agent holds the lock, doctor's fix says check-once exits 3 at once (it
    does not wait), and a real check-once does exit 3 at once."""
    use(api_server, monkeypatch)
    _code, out, _checks = doctor_cli([], capsys)
    lock = line(out, "lock")
    assert "check-once and another run on this state dir exit 3 at once" in lock
    assert "wait" not in lock
    asked = len(api_server.requests)  # the doctor's own
    done = subprocess.run(
        [sys.executable, "-m", "trackssl_agent", "check-once"],
        env=agent_environ(PYTHONPATH=str(ROOT), TRACKSSL_STATE_DIR=str(env / "state"),
                          **api_server.env()),
        cwd=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 3
    assert f"pid {lock_holder}" in done.stderr
    assert len(api_server.requests) == asked


def test_https_to_a_plain_http_api_is_said_in_the_agents_words(
    env: Path, api_server: ApiServer, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """TRACKSSL_URL https:// to an API that speaks plain http: the api tls line says the
    server does not speak TLS and which URL to set, not OpenSSL's words."""
    use(api_server, monkeypatch, TRACKSSL_URL=f"https://127.0.0.1:{api_server.port}")
    code, out, _checks = doctor_cli([], capsys)
    assert code == 2
    assert line(out, "api tls") == (
        f"FAIL  api tls        the server at https://127.0.0.1:{api_server.port} does not speak "
        f"TLS; fix: is it http? Then set TRACKSSL_URL={api_server.url}"
    )
