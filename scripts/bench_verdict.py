#!/usr/bin/env python3
"""Issue 21's benchmark: what judging (SPEC section 4a) costs local mode.

``check-once --targets FILE`` over --targets loopback endpoints (an nginx farm presenting a
leaf + intermediate chain, ``scripts/bench_nginx.py``; install nginx with
``scripts/install-bench.sh``) runs alternately from this tree (every result judged: path
built to the OS store plus ``--ca-file``, names, weak crypto, text with problems and summary)
and from a baseline tree without judging: by default this tree's committed code (``git archive
HEAD``, into a temporary folder; the repository is not touched) with ``Judge.__call__``
replaced by one that only says OK or CRITICAL (failed), so the two differ by judging alone:
parsing, path building, names, weak crypto, reading the store, the problems in the output. With
``--baseline-rev REV`` the baseline is that commit's tree unchanged instead (e.g. the commit
before judging was added, which also lacks every later change).
Both run as ``python -m trackssl_agent`` children of the same interpreter; wall time is
process start to exit, CPU is the child's user + system time. The goal: the judged median
wall at most 10 % above the baseline's.

    python scripts/bench_verdict.py                     # 2,000 targets, medians of 9
    python scripts/bench_verdict.py --targets 200 --reps 1
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.bench_nginx import Endpoint, NginxFarm, endpoints_for  # noqa: E402

GOAL = 1.10
"""Judged wall at most this times the baseline's."""


class DistinctFarm(NginxFarm):
    """The farm with a certificate of its own per endpoint (one server block each): every
    target presents a different leaf under the same intermediate, as on a real network, so
    each chain's path is verified once per target, not remembered from the one before."""

    def __init__(self, prefix: Path, *, files: dict[Endpoint, tuple[Path, Path]]) -> None:
        first = next(iter(files.values()))
        super().__init__(prefix, cert_file=first[0], key_file=first[1], endpoints=list(files))
        self.files = files

    def config(self) -> str:
        """One server block per endpoint, with its own certificate."""
        shared = super().config()
        head = shared[: shared.index("  server {")]
        blocks = "".join(
            "  server {\n"
            f"    listen {e.host}:{e.port} ssl;\n"
            f"    ssl_certificate {cert};\n"
            f"    ssl_certificate_key {key};\n"
            "  }\n"
            for e, (cert, key) in self.files.items()
        )
        return head + blocks + "}\n"


def distinct_chains(
    folder: Path, endpoints: list[Endpoint]
) -> tuple[dict[Endpoint, tuple[Path, Path]], Path]:
    """A leaf per endpoint (one shared key: the leaves differ, key generation would dominate),
    each file leaf + intermediate; and the root's file."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    from tests.certs import key_pem, make_cert, new_key  # noqa: PLC0415

    folder.mkdir(parents=True)
    root_key, inter_key, leaf_key = new_key(), new_key(), new_key()
    root = make_cert(cn="Bench Root CA", key=root_key, ca=True, days=3650)
    inter = make_cert(
        cn="Bench Issuing CA", key=inter_key, issuer_cn="Bench Root CA", issuer_key=root_key,
        ca=True, days=1825,
    )  # fmt: skip
    pem = serialization.Encoding.PEM
    key_file = folder / "leaf.key"
    key_file.write_bytes(key_pem(leaf_key))
    files: dict[Endpoint, tuple[Path, Path]] = {}
    for n, endpoint in enumerate(endpoints):
        leaf = make_cert(
            cn=f"host{n}.bench.test", key=leaf_key, issuer_cn="Bench Issuing CA",
            issuer_key=inter_key, sans=(f"host{n}.bench.test", endpoint.host),
        )  # fmt: skip
        cert_file = folder / f"{n}.crt"
        cert_file.write_bytes(leaf.public_bytes(pem) + inter.public_bytes(pem))
        files[endpoint] = (cert_file, key_file)
    ca_file = folder / "root.crt"
    ca_file.write_bytes(root.public_bytes(pem))
    return files, ca_file


UNJUDGED = '''

def _unjudged(self: Judge, result: ProbeResult) -> Verdict:
    """The benchmark's baseline: no judging, only whether the chain was retrieved."""
    if result.ok and result.chain:
        return Verdict(Status.OK, (), chain_verified=False, days_left=None)
    problem = Problem(Kind.FAILED, Severity.CRITICAL, str(result.error))
    return Verdict(Status.CRITICAL, (problem,), chain_verified=False, days_left=None)


Judge.__call__ = _unjudged  # type: ignore[method-assign]
'''
"""Appended to the baseline's ``verdict/judge.py``."""


def unjudge(tree: Path) -> None:
    """Replace the judging of the exported ``tree`` with ``UNJUDGED``'s pass-through."""
    judge = tree / "trackssl_agent" / "verdict" / "judge.py"
    judge.write_text(judge.read_text() + UNJUDGED)


def export(rev: str, where: Path) -> Path:
    """The tree of ``rev`` under ``where`` (``git archive``; the work tree is not touched)."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "trackssl_agent"], cwd=ROOT, capture_output=True,
        check=True,
    ).stdout  # fmt: skip
    tar = where / "baseline.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as opened:
        opened.extractall(where / "baseline", filter="data")
    return where / "baseline"


def run_once(tree: Path, args: list[str], cwd: Path) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and exit code of ``python -m trackssl_agent ARGS`` from
    ``tree``."""
    # -S: no site processing, so the editable install of this tree (a .pth finder) cannot
    # shadow the baseline; the dependencies come from site-packages by path instead.
    site = sysconfig.get_paths()["purelib"]
    env = {"PYTHONPATH": f"{tree}{os.pathsep}{site}", "PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-S", "-m", "trackssl_agent", *args], cwd=cwd, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False,
    )  # fmt: skip
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode not in (0, 1, 2):
        raise SystemExit(
            f"{' '.join(args)} from {tree} exited {done.returncode}: {done.stderr[-400:]!r}"
        )
    return wall, cpu, done.returncode


def main() -> int:
    """Run the comparison and print the figures; exit 1 on a MISS."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--base-port", type=int, default=20000)
    parser.add_argument(
        "--baseline-rev", default=None,
        help="compare with this commit's tree as it is (default: HEAD with judging removed)",
    )  # fmt: skip
    parser.add_argument(
        "--chains", choices=("distinct", "shared"), default="distinct",
        help="a certificate per endpoint (the default), or one for all",
    )  # fmt: skip
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args()
    from tests.certs import make_chain  # noqa: PLC0415 - only once the path is set

    with tempfile.TemporaryDirectory(prefix="bench-verdict-") as temp:
        work = Path(temp)
        rev = args.baseline_rev or "HEAD"
        baseline = export(rev, work)
        if args.baseline_rev is None:
            unjudge(baseline)
            rev = "HEAD without judging"
        endpoints = endpoints_for(
            args.targets, base_port=args.base_port, per_address=2000, first_octet=1
        )
        farm: NginxFarm
        if args.chains == "shared":
            chain = make_chain(work / "certs", name="bench")
            farm = NginxFarm(
                work / "nginx", cert_file=chain.cert_file, key_file=chain.key_file,
                endpoints=endpoints,
            )  # fmt: skip
            ca_file = chain.ca_file
        else:
            files, ca_file = distinct_chains(work / "certs", endpoints)
            farm = DistinctFarm(work / "nginx", files=files)
        targets = work / "targets.txt"
        targets.write_text("".join(f"{e.host}:{e.port}\n" for e in endpoints))
        farm.start()
        try:
            common = ["check-once", "--targets", str(targets), "--concurrency", "64"]
            common += ["--format", args.format]
            judged_args = [*common, "--ca-file", str(ca_file)]
            # The unjudged tree takes the option too (and never reads the file); an old one
            # may not know it.
            baseline_args = common if args.baseline_rev else judged_args
            runs: dict[str, list[tuple[float, float, int]]] = {"baseline": [], "judged": []}
            for rep in range(args.reps + 1):  # the first pair warms caches, untimed
                for label, tree, command in (
                    ("baseline", baseline, baseline_args),
                    ("judged", ROOT, judged_args),
                ):
                    figures = run_once(tree, command, work)
                    if rep:
                        runs[label].append(figures)
        finally:
            farm.stop()
    walls = {label: statistics.median(r[0] for r in runs[label]) for label in runs}
    cpus = {label: statistics.median(r[1] for r in runs[label]) for label in runs}
    ratio = walls["judged"] / walls["baseline"]
    print(
        f"baseline {rev}: {args.targets} targets, {args.chains} chains, --format {args.format}, "
        f"median of {args.reps}"
    )
    for label in runs:
        print(
            f"  {label:<9} wall {walls[label]:.2f} s  cpu {cpus[label]:.2f} s "
            f"({1000 * cpus[label] / args.targets:.2f} ms/target)  exit {runs[label][0][2]}"
        )
    verdict = "PASS" if ratio <= GOAL else "MISS"
    print(f"{verdict}: judged wall {100 * (ratio - 1):+.1f} % against the baseline (goal <= +10 %)")
    return 0 if ratio <= GOAL else 1


if __name__ == "__main__":
    raise SystemExit(main())
