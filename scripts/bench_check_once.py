#!/usr/bin/env python3
"""Time and peak RSS of one ``check-once`` over many loopback targets, all on 127.0.0.1.

Sets up, in this process: TLS targets (an asyncio TLS server on --ports ports presenting a
leaf + intermediate chain) and the fake TrackSSL API of ``tests/api_server.py`` whose domain
list names --targets entries spread over those ports. Then runs ``python -m trackssl_agent
check-once`` as a child and reports its wall time, its peak RSS (``wait4`` rusage of the
child alone) and what the API received.

    python scripts/bench_check_once.py --targets 2000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.api_server import ApiServer, domain_entries  # noqa: E402
from tests.certs import make_chain  # noqa: E402


def start_targets(context: ssl.SSLContext, count: int) -> list[int]:
    """Start ``count`` TLS listeners on 127.0.0.1 in a background event loop."""
    loop = asyncio.new_event_loop()
    ports: list[int] = []
    ready = threading.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
            await asyncio.wait_for(reader.read(1), 30)
        writer.close()

    async def main() -> None:
        for _ in range(count):
            server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context, backlog=1024)
            ports.append(server.sockets[0].getsockname()[1])
        ready.set()
        await asyncio.Event().wait()

    threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True).start()
    ready.wait(30)
    return ports


def main() -> int:
    """Set up, run one check-once, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=2000)
    parser.add_argument("--ports", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=10)
    parser.add_argument("--dry-run", action="store_true", help="probe only, post nothing")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-check-once-"))
    chain = make_chain(work / "certs", name="bench")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain.cert_file, chain.key_file)
    ports = start_targets(context, args.ports)

    with ApiServer() as api:
        api.domains = domain_entries({n: ports[n % len(ports)] for n in range(args.targets)})
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKSSL_")}
        env.update(api.env())
        env.update({"PYTHONPATH": str(ROOT), "TRACKSSL_STATE_DIR": str(work / "state")})
        command = [
            sys.executable, "-m", "trackssl_agent", "check-once",
            "--concurrency", str(args.concurrency), "--timeout", str(args.timeout),
        ]  # fmt: skip
        if args.dry_run:
            command.append("--dry-run")
        started = time.monotonic()
        # Files, not pipes: a dry run prints every result, and a full pipe would stall it.
        with (work / "stdout").open("wb") as out_file, (work / "stderr").open("wb") as err_file:
            child = subprocess.Popen(command, env=env, cwd=work, stdout=out_file, stderr=err_file)
            _pid, status, usage = os.wait4(child.pid, 0)
        elapsed = time.monotonic() - started
        out = (work / "stdout").read_text().strip().splitlines()[-1:]
        err = (work / "stderr").read_text()
        delivered = len(set(api.posted_ids()))
        posts = len(api.posts())
    rss_mib = usage.ru_maxrss / 1024 if sys.platform != "darwin" else usage.ru_maxrss / 2**20
    print(f"targets            {args.targets} over {args.ports} loopback TLS ports")
    print(f"concurrency        {args.concurrency}")
    print(f"exit code          {os.waitstatus_to_exitcode(status)}")
    print(f"wall time          {elapsed:.2f} s (process start to exit)")
    print(f"child CPU          {usage.ru_utime + usage.ru_stime:.2f} s (user + system)")
    print(f"peak RSS           {rss_mib:.1f} MiB (wait4 ru_maxrss of the check-once process)")
    print(f"API received       {posts} posts, {delivered} distinct domain_ids")
    print(f"agent summary      {' '.join(out)}")
    if err.strip():
        print(f"agent stderr       {err.strip()[-500:]}")
    return 0 if delivered == args.targets or args.dry_run else 1


if __name__ == "__main__":
    sys.exit(main())
