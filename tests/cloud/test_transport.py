"""The direct transport's own HTTP/1.1 (issue 24): each request one write of a head built
once, each answer read by a bounded parser. Against a raw loopback server that answers
with scripted bytes, so the shapes a real API or proxy may send are all met."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.tls_servers import TcpServer
from trackssl_agent.cloud.http_wire import MAX_HEADERS
from trackssl_agent.cloud.transport import AttemptFailed, ResponseError, Transport
from trackssl_agent.errors import ApiError

HEADERS = {"Authorization": "Bearer t0ken", "Accept": "application/json", "User-Agent": "x/1"}


CLOSE = b"<close>"
"""At the end of a scripted answer: sent too, then the server closes the connection."""


class RawApi:
    """Answers each request read on a connection with the next scripted answer; records
    every request's bytes and on which connection it came."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[int, bytes]] = []
        self.server = TcpServer(self._handle)
        self._connections = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def _handle(self, conn: socket.socket) -> None:
        self._connections += 1
        number = self._connections
        conn.settimeout(10)
        buffer = b""
        while self.answers:
            while b"\r\n\r\n" not in buffer:
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            while len(buffer) < length:
                buffer += conn.recv(65536)
            self.requests.append((number, head + b"\r\n\r\n" + buffer[:length]))
            buffer = buffer[length:]
            answer = self.answers.pop(0)
            conn.sendall(answer)
            if answer.endswith(CLOSE):
                conn.close()
                return


@pytest.fixture
def raw() -> Iterator[list[RawApi]]:
    """Raw API servers made by the test, stopped after it."""
    made: list[RawApi] = []
    yield made
    for api in made:
        api.server.close()


def serve(raw: list[RawApi], *answers: bytes) -> RawApi:
    api = RawApi(list(answers))
    raw.append(api)
    return api


def transport(url: str, max_body: int = 1 << 20) -> Transport:
    return Transport(
        url, headers=HEADERS, ca_bundle=None, connect_timeout=5, read_timeout=5,
        max_body=max_body,
    )  # fmt: skip


def ok(body: bytes, *extra: bytes) -> bytes:
    head = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
    return head + b"".join(extra) + b"Content-Length: %d\r\n\r\n" % len(body) + body


def test_a_post_is_one_request_with_the_fixed_headers_and_its_body(raw: list[RawApi]) -> None:
    """The request carries Host, no compression, the caller's headers, the JSON type and
    length, and the body; a second request reuses the kept-alive connection."""
    api = serve(raw, ok(b'{"message":"created"}'), ok(b"{}"))
    t = transport(api.url + "/api")
    first = t.request("POST", api.url + "/api/x.json", body=b'{"a":1}', limit=5, what="post")
    second = t.request("GET", api.url + "/api/y.json", body=None, limit=5, what="list")
    t.close()
    assert (first.status, first.body, second.body) == (201, b'{"message":"created"}', b"{}")
    (one, post), (two, get) = api.requests
    assert one == two == 1
    assert post.startswith(b"POST /api/x.json HTTP/1.1\r\n")
    for line in (
        f"Host: 127.0.0.1:{api.server.port}", "Accept-Encoding: identity",
        "Authorization: Bearer t0ken", "Accept: application/json", "User-Agent: x/1",
        "Content-Type: application/json", "Content-Length: 7",
    ):  # fmt: skip
        assert f"\r\n{line}\r\n".encode() in post
    assert post.endswith(b'\r\n\r\n{"a":1}')
    assert get.startswith(b"GET /api/y.json HTTP/1.1\r\n")
    assert b"Content-Length" not in get


def test_a_chunked_answer_is_read_whole_and_the_connection_kept(raw: list[RawApi]) -> None:
    """Chunks (with an extension and a trailer) make one body; the connection is reused."""
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5;ext=1\r\n{"a":\r\n3\r\n 1}\r\n0\r\nX-Trailer: y\r\n\r\n'
    )
    api = serve(raw, chunked, ok(b"{}"))
    t = transport(api.url)
    answer = t.request("GET", api.url + "/a", body=None, limit=5, what="list")
    again = t.request("GET", api.url + "/b", body=None, limit=5, what="list")
    t.close()
    assert answer.body == b'{"a": 1}'
    assert again.body == b"{}"
    assert [number for number, _ in api.requests] == [1, 1]


def test_an_answer_without_a_length_is_read_to_the_close(raw: list[RawApi]) -> None:
    """No Content-Length nor chunks: the body is what comes until the server closes, and
    the next request opens a new connection."""
    api = serve(raw, b"HTTP/1.1 200 OK\r\n\r\n[1, 2, 3]" + CLOSE, ok(b"{}"))
    t = transport(api.url)
    answer = t.request("GET", api.url + "/a", body=None, limit=5, what="list")
    again = t.request("GET", api.url + "/b", body=None, limit=5, what="list")
    t.close()
    assert answer.body == b"[1, 2, 3]" + CLOSE
    assert again.body == b"{}"
    assert [number for number, _ in api.requests] == [1, 2]


def test_http_1_0_and_connection_close_end_the_connection(raw: list[RawApi]) -> None:
    """An HTTP/1.0 answer (without keep-alive) and a ``Connection: close`` answer are
    not reused: each next request comes on a new connection."""
    api = serve(
        raw,
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        ok(b"{}", b"Connection: close\r\n"),
        ok(b"{}"),
    )
    t = transport(api.url)
    for path in ("/a", "/b", "/c"):
        assert t.request("GET", api.url + path, body=None, limit=5, what="list").body == b"{}"
    t.close()
    assert [number for number, _ in api.requests] == [1, 2, 3]


def test_interim_answers_are_skipped_and_headers_folded_and_joined(raw: list[RawApi]) -> None:
    """A 100 Continue before the answer is skipped; a folded header continues its line,
    a repeated one is joined with a comma, names are case-insensitive."""
    answer = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 429 Too Many\r\nRetry-After: 7\r\nX-Note: one\r\n two\r\n"
        b"x-note: three\r\nContent-Length: 2\r\n\r\n{}"
    )
    api = serve(raw, answer)
    t = transport(api.url)
    got = t.request("GET", api.url + "/a", body=None, limit=5, what="list")
    t.close()
    assert (got.status, got.body) == (429, b"{}")
    assert got.header("retry-after") == "7"
    assert got.header("X-NOTE") == "one two, three"
    assert got.header("Missing") is None


def test_too_many_headers_and_a_non_http_answer_are_failed_attempts(raw: list[RawApi]) -> None:
    """More than MAX_HEADERS header lines, or an answer that is not HTTP, fail the attempt
    with a printable reason (the retries decide what happens next)."""
    many = b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * (MAX_HEADERS + 1) + b"Content-Length: 0\r\n\r\n"
    api = serve(raw, many, b"SSH-2.0-OpenSSH_9.2\r\n\x1b[2J\r\n\r\n" + CLOSE)
    t = transport(api.url)
    with pytest.raises(AttemptFailed, match=f"more than {MAX_HEADERS} headers"):
        t.request("GET", api.url + "/a", body=None, limit=5, what="list")
    with pytest.raises(AttemptFailed, match=r"not HTTP: 'SSH-2\.0-OpenSSH_9\.2'"):
        t.request("GET", api.url + "/b", body=None, limit=5, what="list")
    t.close()


def test_bodies_over_the_limit_are_refused_however_they_come(raw: list[RawApi]) -> None:
    """A chunked body or one read to the close that grows past the limit is refused as
    too large, like a declared one."""
    big_chunks = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"400\r\n" + b"x" * 1024 + b"\r\n") * 4
        + b"0\r\n\r\n"
    )
    api = serve(raw, big_chunks, b"HTTP/1.1 200 OK\r\n\r\n" + b"y" * 5000 + CLOSE)
    t = transport(api.url, max_body=3000)
    for path in ("/a", "/b"):
        with pytest.raises(ResponseError, match="larger than"):
            t.request("GET", api.url + path, body=None, limit=5, what="domain list")
    t.close()


def test_a_header_value_that_would_break_the_request_is_refused() -> None:
    """A value holding a line break would start another header: refused at once."""
    with pytest.raises(ApiError, match="Authorization header cannot be sent"):
        Transport(
            "http://127.0.0.1:9", headers={"Authorization": "Bearer x\r\nX-Evil: 1"},
            ca_bundle=None, connect_timeout=1, read_timeout=1, max_body=10,
        )  # fmt: skip


def test_a_server_closing_an_idle_connection_is_retried_once_fresh(raw: list[RawApi]) -> None:
    """A kept-alive connection the server closed after its answer is not an error: the
    next request finds it closed and goes again on a new connection."""
    closing = serve(raw, ok(b"{}"), ok(b"{}"))
    closing.answers = [ok(b"{}")]  # one answer per connection, then the server closes it
    t = transport(closing.url)

    def one(path: str) -> bytes:
        closing.answers.append(ok(b"{}"))
        return t.request("GET", closing.url + path, body=None, limit=5, what="list").body

    assert t.request("GET", closing.url + "/a", body=None, limit=5, what="list").body == b"{}"
    for conn in list(closing.server.connections):
        conn.shutdown(socket.SHUT_RDWR)  # the server ends the idle connection
    assert one("/b") == b"{}"
    t.close()
    assert [number for number, _ in closing.requests] == [1, 2]
