#!/usr/bin/env python3
"""A small process that starts the benchmark's measured children and reports ``wait4``.

Why a separate process: on Linux a child's ``ru_maxrss`` includes the memory of the process
image it replaced at ``exec``, which after ``fork``/``vfork`` is the parent's. The benchmark
itself imports ``cryptography`` (for its certificates) and would lend its 35+ MiB to every
child's peak. This spawner imports only the standard modules below, so the floor it lends
(about 9 MiB) is below any Python child's own footprint.

Protocol: one JSON object per stdin line, ``{"argv": [...], "env": {...}, "cwd": "...",
"stdout": "path", "stderr": "path"}``; one JSON line back per child, ``{"wall_s",
"cpu_s", "maxrss_kib", "exit_code"}``.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> None:
    """Serve requests until stdin closes."""
    for line in sys.stdin:
        request = json.loads(line)
        os.chdir(request["cwd"])
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (
                os.POSIX_SPAWN_OPEN,
                1,
                request["stdout"],
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                0o644,
            ),
            (
                os.POSIX_SPAWN_OPEN,
                2,
                request["stderr"],
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                0o644,
            ),
        ]
        started = time.perf_counter()
        started_at = time.monotonic()
        pid = os.posix_spawnp(
            request["argv"][0], request["argv"], request["env"], file_actions=actions
        )
        _pid, status, usage = os.wait4(pid, 0)
        wall = time.perf_counter() - started
        answer = {
            "wall_s": wall,
            "started_at": started_at,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "maxrss_kib": usage.ru_maxrss,
            "exit_code": os.waitstatus_to_exitcode(status),
        }
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
