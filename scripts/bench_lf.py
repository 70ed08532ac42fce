#!/usr/bin/env python3
"""LF, the reference client of issue 11: the whole job of one API cycle, done minimally.

GET the domain list, then 16 threads share the targets: per target connect, TLS handshake
with one reused ``SSLContext`` that verifies nothing, take the leaf DER, close, and POST the
SPEC section 5 payload with the Bearer header over that thread's keep-alive
``http.client`` connection. Standard library only, so its start-up and CPU are the floor the
agent is measured against.

    python scripts/bench_lf.py --url http://127.0.0.1:PORT --auth-token T --agent-token A

Prints one JSON line (targets, posted, failed probes, rejected posts) and exits 0 when every
result was accepted. Meant for loopback API servers and targets only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

VERSION = "lf-1"


class Posting:
    """One keep-alive connection to the API, reopened once if the server closed it."""

    def __init__(self, host: str, port: int, path: str, headers: dict[str, str]) -> None:
        self.connection = http.client.HTTPConnection(host, port, timeout=60)
        self.path = path
        self.headers = headers

    def post(self, body: bytes) -> int:
        """POST ``body``; the status."""
        for attempt in (1, 2):
            try:
                self.connection.request("POST", self.path, body, self.headers)
                response = self.connection.getresponse()
                response.read()
                return response.status
            except (http.client.RemoteDisconnected, ConnectionError):
                self.connection.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def probe(
    context: ssl.SSLContext, host: str, port: int, timeout: float
) -> tuple[str, str, str, str]:
    """Leaf PEM, error, TLS version and peer address of one target."""
    address = ""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            address = sock.getpeername()[0]
            with context.wrap_socket(sock, server_hostname=host) as tls:
                der = tls.getpeercert(binary_form=True)
                version = tls.version() or ""
    except TimeoutError:
        return "", "timeout: no answer", "", address
    except ssl.SSLError as exc:
        return "", f"tls: {exc}", "", address
    except OSError as exc:
        return "", f"connect: {exc}", "", address
    if der is None:
        return "", "tls: no certificate", version, address
    return ssl.DER_cert_to_PEM_cert(der), "", version, address


def fetch_domains(host: str, port: int, path: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    """The domain list's entries."""
    listing = http.client.HTTPConnection(host, port, timeout=60)
    listing.request("GET", path, headers=headers)
    response = listing.getresponse()
    if response.status != 200:
        raise SystemExit(f"domains.json answered HTTP {response.status}")
    domains: list[dict[str, Any]] = json.loads(response.read())["data"]
    listing.close()
    return domains


def main() -> int:
    """Run one cycle and print the counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", required=True)
    parser.add_argument("--auth-token", required=True)
    parser.add_argument("--agent-token", required=True)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()

    parts = urlsplit(args.url)
    if parts.scheme != "http" or not parts.hostname:
        raise SystemExit("--url: http://127.0.0.1:PORT expected")
    host, port = parts.hostname, parts.port or 80
    base = f"{parts.path.rstrip('/')}/api/v1/agents/{args.agent_token}"
    headers = {
        "Authorization": f"Bearer {args.auth_token}",
        "Accept": "application/json",
        "User-Agent": f"trackssl-bench-lf/{VERSION}",
    }
    domains = fetch_domains(host, port, f"{base}/domains.json", headers)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    post_headers = {**headers, "Content-Type": "application/json"}
    entries: Iterator[dict[str, Any]] = iter(domains)
    lock = threading.Lock()
    counts = {"posted": 0, "failed": 0, "rejected": 0}

    def worker() -> None:
        posting = Posting(host, port, f"{base}/certificate.json", post_headers)
        posted = failed = rejected = 0
        while True:
            with lock:
                entry = next(entries, None)
            if entry is None:
                break
            target_host, target_port = str(entry["hostname"]), int(entry["port"])
            probed_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            pem, error, version, address = probe(context, target_host, target_port, args.timeout)
            payload = {
                "domain_id": entry["domain_id"],
                "hostname": target_host,
                "port": str(entry["port"]),
                "certificate": pem,
                "error": error,
                "chain": [],
                "probed_at": probed_at,
                "tls_version": version,
                "address": address,
                "agent_version": VERSION,
            }
            status = posting.post(json.dumps({"domain": payload}).encode())
            failed += bool(error)
            if status in (200, 201):
                posted += 1
            else:
                rejected += 1
        posting.connection.close()
        with lock:
            counts["posted"] += posted
            counts["failed"] += failed
            counts["rejected"] += rejected

    threads = [threading.Thread(target=worker) for _ in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps({"targets": len(domains), **counts}))
    return 0 if counts["posted"] == len(domains) else 1


if __name__ == "__main__":
    sys.exit(main())
