#!/usr/bin/env python3
"""A fast loopback TrackSSL API (SPEC section 5) for ``scripts/bench_cycle.py``, run as its
own process so that its CPU never counts against the client being measured.

One asyncio event loop with a minimal HTTP/1.1 parser and keep-alive: a few tens of
microseconds per request, so it is not the bottleneck at thousands of posts per second, and
``--delay`` holds every API request that long without a thread per waiting request.

    python scripts/bench_api.py --auth-token T --agent-token A [--port 0] [--delay 0.15]

It prints ``port N`` on its first stdout line once listening. API endpoints check the bearer
token (401) and the agent token (404) as the cloud does:

- ``GET  /api/v1/agents/{A}/domains.json`` answers the configured list;
- ``POST /api/v1/agents/{A}/certificate.json`` answers 201 ``{"message": "created"}`` and
  counts the domain_id when the payload has the five stored fields.

Control endpoints for the benchmark (no auth, never delayed):

- ``POST /_bench/config`` with ``{"domains": [...], "delay": 0.15}`` sets the list and the
  delay and resets the counters;
- ``GET /_bench/stats`` answers the counters and this process's CPU seconds.

Loopback only: it refuses to bind anything but a 127.0.0.0/8 address.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import time

STORED_FIELDS = ("domain_id", "hostname", "port", "certificate", "error")
REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found"}


class State:
    """The domain list, the delay and what was received since the last config."""

    def __init__(self, auth_token: str, agent_token: str, delay: float) -> None:
        self.bearer = f"Bearer {auth_token}".encode()
        prefix = f"/api/v1/agents/{agent_token}".encode()
        self.domains_path = prefix + b"/domains.json"
        self.post_path = prefix + b"/certificate.json"
        self.agent_prefix = b"/api/v1/agents/"
        self.delay = delay
        self.domains_body = b'{"data": []}'
        self.known: set[int] = set()
        self.reset()

    def reset(self) -> None:
        """Forget what was received."""
        self.gets = 0
        self.get_at = 0.0
        """``time.monotonic()`` of the first GET of the domain list (the client's start-up
        ends there)."""
        self.posts = 0
        self.received: set[int] = set()
        self.distinct_at = 0.0
        """``time.monotonic()`` when the newest distinct domain_id arrived (the clock is
        the machine's, so the benchmark can time a client that never exits)."""
        self.unknown_ids = 0
        self.bad_payloads = 0
        self.unauthorized = 0
        self.with_certificate = 0
        self.with_error = 0

    def configure(self, body: bytes) -> None:
        """Apply a ``/_bench/config`` body."""
        config = json.loads(body)
        if "domains" in config:
            domains = config["domains"]
            self.domains_body = json.dumps({"data": domains}).encode()
            self.known = {int(entry["domain_id"]) for entry in domains}
        if "delay" in config:
            self.delay = float(config["delay"])
        self.reset()

    def stats(self) -> bytes:
        """The counters as JSON."""
        return json.dumps(
            {
                "gets": self.gets,
                "get_at": self.get_at,
                "posts": self.posts,
                "distinct": len(self.received),
                "distinct_at": self.distinct_at,
                "missing": len(self.known - self.received),
                "unknown_ids": self.unknown_ids,
                "bad_payloads": self.bad_payloads,
                "unauthorized": self.unauthorized,
                "with_certificate": self.with_certificate,
                "with_error": self.with_error,
                "delay": self.delay,
                "cpu_s": time.process_time(),
            }
        ).encode()

    def answer(self, method: bytes, path: bytes, auth: bytes, body: bytes) -> tuple[int, bytes]:
        """Status and JSON body for one API request."""
        if path.startswith(self.agent_prefix) and auth != self.bearer:
            self.unauthorized += 1
            return 401, b'{"error": "HTTP 401"}'
        if method == b"GET" and path == self.domains_path:
            self.gets += 1
            self.get_at = self.get_at or time.monotonic()
            return 200, self.domains_body
        if method == b"POST" and path == self.post_path:
            self.posts += 1
            try:
                domain = json.loads(body)["domain"]
                fields_present = all(name in domain for name in STORED_FIELDS)
                domain_id = int(domain["domain_id"])
            except (ValueError, KeyError, TypeError):
                fields_present = False
                domain_id = 0
            if not fields_present:
                self.bad_payloads += 1
                return 400, b'{"error": "HTTP 400"}'
            if domain_id in self.known:
                if domain_id not in self.received:
                    self.distinct_at = time.monotonic()
                self.received.add(domain_id)
            else:
                self.unknown_ids += 1
            if domain["certificate"]:
                self.with_certificate += 1
            if domain["error"]:
                self.with_error += 1
            return 201, b'{"message": "created"}'
        return 404, b'{"error": "HTTP 404"}'


def response(status: int, body: bytes, *, close: bool) -> bytes:
    """One HTTP/1.1 response."""
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
    )
    if close:
        head += "Connection: close\r\n"
    return head.encode() + b"\r\n" + body


async def serve_connection(
    state: State, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Answer requests on one keep-alive connection until the client closes it."""
    ended = (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError)
    with contextlib.suppress(*ended):
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            method, path, version = lines[0].split(b" ", 2)
            length = 0
            auth = b""
            close = version == b"HTTP/1.0"
            chunked = False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"authorization":
                    auth = value.strip()
                elif name == b"connection":
                    close = value.strip().lower() == b"close"
                elif name == b"transfer-encoding":
                    chunked = True
            if chunked:
                # Nothing the agent or LF sends is chunked; refuse rather than misparse.
                writer.write(response(400, b'{"error": "chunked"}', close=True))
                await writer.drain()
                break
            body = await reader.readexactly(length) if length else b""
            if path == b"/_bench/config" and method == b"POST":
                state.configure(body)
                status, payload = 200, b"{}"
            elif path == b"/_bench/stats":
                status, payload = 200, state.stats()
            else:
                if state.delay > 0:
                    await asyncio.sleep(state.delay)
                status, payload = state.answer(method, path.split(b"?", 1)[0], auth, body)
            writer.write(response(status, payload, close=close))
            await writer.drain()
            if close:
                break
    writer.close()


async def serve(args: argparse.Namespace) -> None:
    """Listen and print the port."""
    if not ipaddress.ip_address(args.host).is_loopback:
        raise SystemExit(f"--host {args.host}: loopback addresses only")
    state = State(args.auth_token, args.agent_token, args.delay)
    server = await asyncio.start_server(
        lambda r, w: serve_connection(state, r, w), args.host, args.port, backlog=4096
    )
    port = server.sockets[0].getsockname()[1]
    print(f"port {port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    """Parse the options and serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--auth-token", required=True)
    parser.add_argument("--agent-token", required=True)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds added to each request")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
