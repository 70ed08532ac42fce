#!/usr/bin/env python3
"""Mutation check: do the tests catch the bugs that would break the agent's promises?

Each entry of ``MUTATIONS`` is one deliberate bug: a file, one exact line of it (``old``,
which must occur exactly once), what replaces it (``new``), and the tests that should
catch it (a fast pytest selection, not the whole suite). The script copies the working
tree to a temporary directory (the real tree is never modified), checks that the selected
tests pass there unmutated, then applies the bugs one at a time and runs their selection.
A mutation is *killed* when its tests fail, and *survives* when they pass.

    .venv/bin/python scripts/mutation_check.py            # every mutation, a few minutes
    .venv/bin/python scripts/mutation_check.py --list     # names and promises only
    .venv/bin/python scripts/mutation_check.py --only outbox-no-file-fsync lock-never-held

Exit 0 when every mutation is killed; 1 when one survives, or when a mutation's ``old``
line is no longer found exactly once (the list must follow the code: update the line);
2 when the selected tests fail without any mutation. Not part of ``.ci/run``: too slow.
Standard library only; run it with the Python that has the test dependencies.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TEST_TIMEOUT = 60
"""pytest-timeout for one test: a mutation that makes a test hang fails it this way."""
RUN_TIMEOUT = 600
"""Seconds one selection may take in all before it counts as killed (by a hang)."""

_COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "*.pyc", "dist", "*.egg-info", ".mypy_cache",
    ".ruff_cache", ".pytest_cache", ".hypothesis", ".setuptools-build", ".build-venv",
)  # fmt: skip


@dataclass(frozen=True)
class Mutation:
    """One deliberate bug and the tests that must catch it."""

    name: str
    promise: str
    """What the bug breaks, in words."""
    file: str
    """Relative to the repository root."""
    old: str
    """One line of ``file`` (without its newline), found exactly once."""
    new: str
    tests: tuple[str, ...]
    """pytest arguments: files, node ids, ``-k`` expressions."""


_PROBE_TESTS = ("tests/engine/test_probe_failures.py", "tests/engine/test_probe.py")
_LOG_TESTS = (
    "tests/config/test_secret.py",
    "tests/config/test_config.py",
    "tests/agent/test_check_once.py::test_token_echoed_into_a_log_line_is_masked_in_every_log_format",
)
_OUTBOX_TESTS = (
    "tests/state/test_outbox.py",
    "tests/agent/test_cycle.py::test_every_result_is_on_disk_before_its_post_arrives",
)
_STARTTLS_TESTS = (
    "tests/engine/test_starttls.py",
    "-k",
    "refusal or multiline or queued or bytes_after or waits_for_each or endless",
)
_ALLOW_TESTS = (
    "tests/config/test_config.py",
    "tests/config/test_config_hostile.py",
    "tests/engine/test_probe.py",
    "tests/agent/test_cycle.py::test_allow_list_denies_without_contact",
)

MUTATIONS: tuple[Mutation, ...] = (
    # -- the one deadline --------------------------------------------------------------
    Mutation(
        "deadline-rearmed-after-starttls",
        "the handshake gets a fresh deadline after the STARTTLS dialogue",
        "trackssl_agent/engine/probe.py",
        "            io = start_tls(target, target.starttls, conn, servername or target.host)",
        "            io = start_tls(target, target.starttls, conn, servername or target.host)"
        "; conn.deadline = Deadline(settings.timeout)",
        _PROBE_TESTS,
    ),
    Mutation(
        "deadline-rearmed-for-the-socket-handshake",
        "the handshake in C gets a fresh deadline after the dialogue",
        "trackssl_agent/engine/probe.py",
        "            return address, shake_hands_over_socket("
        "target, sock, deadline, context, servername)",
        "            return address, shake_hands_over_socket("
        "target, sock, Deadline(settings.timeout), context, servername)",
        _PROBE_TESTS,
    ),
    Mutation(
        "deadline-rearmed-after-connect",
        "the dialogue and handshake get a fresh deadline after connect",
        "trackssl_agent/engine/probe.py",
        "        conn = Conn(sock, deadline)",
        "        conn = Conn(sock, Deadline(settings.timeout))",
        _PROBE_TESTS,
    ),
    Mutation(
        "deadline-never-runs-out",
        "every blocking step gets the whole timeout again (a trickling server never ends)",
        "trackssl_agent/engine/transport.py",
        "        left = self.expires - self._clock()",
        "        left = self.seconds",
        _PROBE_TESTS,
    ),
    Mutation(
        "dns-lookup-unbounded",
        "a hung DNS lookup is waited for past the deadline",
        "trackssl_agent/engine/probe.py",
        "    if not done.wait(left):",
        "    if not done.wait(left * 4):",
        _PROBE_TESTS,
    ),
    # -- redaction ---------------------------------------------------------------------
    Mutation(
        "redaction-missing-in-text-log",
        "--log-format text prints the auth token",
        "trackssl_agent/log.py",
        "        return redact(super().format(record))",
        "        return super().format(record)",
        _LOG_TESTS,
    ),
    Mutation(
        "redaction-missing-in-json-log",
        "--log-format json prints the auth token",
        "trackssl_agent/log.py",
        "        entry = {key: redact(v) if isinstance(v, str) else v"
        " for key, v in entry.items()}\n"
        "        return redact_json(json.dumps(entry, default=str))",
        "        return json.dumps(entry, default=str)",
        _LOG_TESTS,
    ),
    Mutation(
        "redact-is-a-no-op",
        "redact() returns the token unchanged",
        "trackssl_agent/log.py",
        "    return _redactor.redact(text)",
        "    return text",
        _LOG_TESTS,
    ),
    Mutation(
        "redaction-of-partial-runs-dropped",
        "a snippet holding part of the token (8 or more of its characters) is printed",
        "trackssl_agent/base/redaction.py",
        "            spans = _spans(text, grams)",
        "            spans = []",
        ("tests/base/test_redaction.py",),
    ),
    Mutation(
        "loopback-api-proxied",
        "a plain-http loopback API is sent through HTTP_PROXY, the token in clear",
        "trackssl_agent/cloud/api.py",
        "    if not proxiable(url):\n        return {}",
        "    pass",
        ("tests/cloud/test_api_proxy.py",),
    ),
    Mutation(
        "outside-numbers-not-ascii",
        "Retry-After: \u00b2 (a Unicode digit) reaches float() and ends in an internal error",
        "trackssl_agent/base/ascii_values.py",
        "    return text.isascii() and text.isdigit()",
        "    return text.isdigit()",
        ("tests/base/test_ascii_values.py",),
    ),
    Mutation(
        "log-file-follows-links",
        "root appends to any file through a log link another user planted",
        "trackssl_agent/base/log_file.py",
        '_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)',
        "_NOFOLLOW = 0",
        ("tests/base/test_log_file.py",),
    ),
    # -- outbox durability -------------------------------------------------------------
    Mutation(
        "outbox-written-in-place",
        "a segment is written under its own name, not a temporary renamed over it",
        "trackssl_agent/state/outbox_disk.py",
        '    tmp = f".{name}.tmp"',
        "    tmp = name",
        _OUTBOX_TESTS,
    ),
    Mutation(
        "outbox-no-file-fsync",
        "a segment's bytes are not fsynced before the rename",
        "trackssl_agent/state/outbox_disk.py",
        "            fsync(fd)",
        "            pass",
        _OUTBOX_TESTS,
    ),
    Mutation(
        "outbox-no-folder-fsync",
        "the rename of a new segment is not made durable",
        "trackssl_agent/state/outbox_disk.py",
        "    folder.fsync()",
        "    pass",
        _OUTBOX_TESTS,
    ),
    Mutation(
        "outbox-post-before-store",
        "results are posted while held in memory only (stored at close)",
        "trackssl_agent/state/outbox.py",
        "            seg_id = self._new_segment(self._write(records), len(records))",
        "            seg_id = self._new_segment(None, len(records))",
        _OUTBOX_TESTS,
    ),
    # -- the state dir lock ------------------------------------------------------------
    Mutation(
        "lock-never-held",
        "two agents can use one state dir at once",
        "trackssl_agent/state/lock.py",
        "        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)",
        "        pass",
        ("tests/state/test_lock.py", "tests/state/test_outbox.py", "-k", "lock"),
    ),
    # -- exit codes --------------------------------------------------------------------
    Mutation(
        "exit-0-with-results-waiting",
        "a cycle that left results undelivered exits 0",
        "trackssl_agent/render/report.py",
        "    return ExitCode.WARNING if waits else ExitCode.OK",
        "    return ExitCode.OK",
        ("tests/render/test_exit_codes.py", "tests/agent/test_cycle.py"),
    ),
    Mutation(
        "exit-auth-failure-not-critical",
        "rejected tokens do not exit 2",
        "trackssl_agent/render/report.py",
        "    if auth_failed:",
        "    if False:",
        ("tests/render/test_exit_codes.py", "tests/agent/test_cycle.py"),
    ),
    Mutation(
        "exit-crit-days-ignored",
        "a certificate within --crit-days is not CRITICAL",
        "trackssl_agent/verdict/judge.py",
        "    if left < policy.crit_days * _DAY:",
        "    if left < 0:",
        (
            "tests/render/test_exit_codes.py",
            "tests/cli/test_cli_probe.py",
            "tests/verdict/test_verdict.py",
        ),
    ),
    Mutation(
        "issuer-shortcut-past-name-constraints",
        "a leaf under a verified CA skips the name constraints of the root above it",
        "trackssl_agent/verdict/chain_check.py",
        "            cert.extensions.get_extension_for_class(x509.NameConstraints)",
        "            cert.extensions.get_extension_for_class(x509.OCSPNoCheck)",
        ("tests/verdict/test_verified_issuers.py",),
    ),
    Mutation(
        "issuer-shortcut-past-expiry",
        "a leaf under a verified CA is trusted after the root above the CA expired",
        "trackssl_agent/verdict/chain_check.py",
        "    if not issuer.not_before <= at <= issuer.not_after:",
        "    if False:",
        ("tests/verdict/test_verified_issuers.py",),
    ),
    # -- the allow list ----------------------------------------------------------------
    Mutation(
        "allow-list-allows-every-address",
        "TRACKSSL_ALLOW lets any address through",
        "trackssl_agent/engine/allow.py",
        "        return any(ip in network for network in self.networks"
        " if network.version == ip.version)",
        "        return True",
        _ALLOW_TESTS,
    ),
    Mutation(
        "allow-list-not-applied",
        "the probe contacts addresses the allow list denies",
        "trackssl_agent/engine/probe.py",
        "        addresses = _allowed(target, addresses, settings.allow)",
        "        pass",
        _ALLOW_TESTS,
    ),
    Mutation(
        "allow-list-ipv4-mapped-unmapped",
        "an IPv4-mapped IPv6 address is not checked as the IPv4 address it is",
        "trackssl_agent/engine/allow.py",
        "        return ip.ipv4_mapped",
        "        return ip",
        _ALLOW_TESTS,
    ),
    # -- STARTTLS reply checks ---------------------------------------------------------
    Mutation(
        "starttls-coded-reply-unchecked",
        "an SMTP/LMTP/FTP/NNTP refusal is taken for the go-ahead",
        "trackssl_agent/engine/starttls.py",
        "    if code not in wanted:",
        "    if False:",
        _STARTTLS_TESTS,
    ),
    Mutation(
        "starttls-pop3-reply-unchecked",
        "a POP3 -ERR to STLS is taken for the go-ahead",
        "trackssl_agent/engine/starttls.py",
        '    if not reply.startswith(b"+OK"):',
        "    if False:",
        _STARTTLS_TESTS,
    ),
    Mutation(
        "starttls-imap-reply-unchecked",
        "an IMAP NO to STARTTLS is taken for the go-ahead",
        "trackssl_agent/engine/starttls.py",
        '    if not line[3:].upper().startswith(b"OK"):',
        "    if False:",
        _STARTTLS_TESTS,
    ),
    Mutation(
        "starttls-injection-accepted",
        "plaintext queued behind the go-ahead is not refused (STARTTLS injection)",
        "trackssl_agent/engine/starttls.py",
        "    if stray:",
        "    if False:",
        _STARTTLS_TESTS,
    ),
)


@dataclass(frozen=True)
class Outcome:
    """What one run of a selection gave."""

    verdict: str
    """``killed``, ``survived``, ``stale`` (its line is not found exactly once) or ``error``."""
    seconds: float
    detail: str


def apply(source: str, mutation: Mutation) -> str | None:
    """``source`` with the mutation's line replaced; None unless the line is there once."""
    pattern = re.compile(rf"^{re.escape(mutation.old)}$", re.MULTILINE)
    if len(pattern.findall(source)) != 1:
        return None
    return pattern.sub(lambda _m: mutation.new, source)


def run_tests(copy: Path, tests: tuple[str, ...]) -> tuple[int, str, float]:
    """Run ``tests`` in ``copy``; the exit code (-1 on a hang), its output, the seconds."""
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [
        sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
        f"--timeout={TEST_TIMEOUT}", *tests,
    ]  # fmt: skip
    started = time.monotonic()
    try:
        proc = subprocess.run(
            command, cwd=copy, env=env, capture_output=True, text=True,
            timeout=RUN_TIMEOUT, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return -1, f"no result within {RUN_TIMEOUT} s", time.monotonic() - started
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started


def first_failure(output: str) -> str:
    """The node id of the first failed test in pytest's short summary."""
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" - ")[0]
    return "(no FAILED line; see the output)"


def check(copy: Path, mutation: Mutation) -> Outcome:
    """Apply ``mutation`` in ``copy``, run its tests, put the file back."""
    path = copy / mutation.file
    original = path.read_text(encoding="utf-8")
    mutated = apply(original, mutation)
    if mutated is None:
        return Outcome("stale", 0.0, f"its line is not found exactly once in {mutation.file}")
    path.write_text(mutated, encoding="utf-8")
    try:
        code, output, seconds = run_tests(copy, mutation.tests)
    finally:
        path.write_text(original, encoding="utf-8")
    if code == 0:
        return Outcome("survived", seconds, "every selected test passed")
    if code == 1:
        return Outcome("killed", seconds, first_failure(output))
    if code == -1:
        return Outcome("killed", seconds, output)
    tail = "\n".join(output.splitlines()[-5:])
    return Outcome("error", seconds, f"pytest exited {code}:\n{tail}")


def make_copy(target: Path) -> Path:
    """Copy the working tree (uncommitted changes included) to ``target``/repo."""
    copy = target / "repo"
    shutil.copytree(ROOT, copy, ignore=_COPY_IGNORE, symlinks=True)
    probe = subprocess.run(
        [sys.executable, "-c", "import trackssl_agent; print(trackssl_agent.__file__)"],
        cwd=copy, env={**os.environ, "PYTHONPATH": str(copy)},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    imported = Path(probe.stdout.strip()).resolve()
    if not imported.is_relative_to(copy.resolve()):
        sys.exit(f"mutation_check: the copy imports trackssl_agent from {imported}, not itself")
    return copy


def main(argv: list[str] | None = None) -> int:
    """Run the check; the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutations")
    args = parser.parse_args(argv)
    chosen = list(MUTATIONS)
    if args.only:
        unknown = set(args.only) - {m.name for m in MUTATIONS}
        if unknown:
            parser.error(f"unknown mutation(s): {', '.join(sorted(unknown))}")
        chosen = [m for m in MUTATIONS if m.name in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.name:34} {m.file}: {m.promise}")
        return 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="trackssl-mutation-") as tmp:
        copy = make_copy(Path(tmp))
        selections = list(dict.fromkeys(m.tests for m in chosen))
        for tests in selections:
            code, output, _seconds = run_tests(copy, tests)
            if code != 0:
                print(f"the tests {' '.join(tests)} fail without any mutation:", file=sys.stderr)
                print("\n".join(output.splitlines()[-15:]), file=sys.stderr)
                return 2
        print(f"baseline: {len(selections)} test selections pass unmutated")
        outcomes: list[tuple[Mutation, Outcome]] = []
        for mutation in chosen:
            outcome = check(copy, mutation)
            outcomes.append((mutation, outcome))
            line = f"{outcome.verdict:8} {mutation.name:34} {outcome.seconds:5.1f} s"
            print(f"{line}  {outcome.detail}", flush=True)
    counts = {v: sum(1 for _m, o in outcomes if o.verdict == v) for v in
              ("killed", "survived", "stale", "error")}  # fmt: skip
    print(
        f"{len(outcomes)} mutations: {counts['killed']} killed, {counts['survived']} survived, "
        f"{counts['stale']} stale, {counts['error']} errors "
        f"in {time.monotonic() - started:.0f} s"
    )
    return 0 if counts["killed"] == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
