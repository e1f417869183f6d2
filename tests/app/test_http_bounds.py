"""The HTTP boundary under slow, huge and malformed clients (app/http_protocol.py), against the real server on
127.0.0.1 over raw sockets: each gets the project's error body and a closed connection within its bound, and
the server keeps answering everyone else."""

import json
import socket
import time

import pytest

from tests.conftest import start_server, stop_server


@pytest.fixture(scope="module")
def port(weights_file, tmp_path_factory):
    base, proc = start_server(
        weights_file,
        tmp_path_factory.mktemp("bounds") / "server.log",
        RNNLM_HEADER_TIMEOUT_S="1",
        RNNLM_BODY_TIMEOUT_S="1",
        RNNLM_MAX_HEADER_BYTES="8192",
    )
    yield int(base.rsplit(":", 1)[1])
    stop_server(proc)


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(10)
    return s


def answer(s: socket.socket) -> tuple[int, dict, float]:
    """Status, JSON body and seconds until the server closed the connection."""
    start, data = time.monotonic(), b""
    with s:
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    return int(head.split()[1]), json.loads(body), time.monotonic() - start


def assert_error_body(body: dict, status: int) -> str:
    assert set(body) == {"error"} and body["error"]["code"] == status
    return body["error"]["message"]


def test_a_client_that_sends_nothing_or_trickles_its_headers_gets_408_at_the_header_deadline(port):
    status, body, waited = answer(connect(port))
    assert status == 408 and "headers did not arrive within 1 s" in assert_error_body(body, 408)
    assert 0.8 < waited < 3
    s, start = connect(port), time.monotonic()
    try:
        for byte in b"POST /predict HTTP/1.1\r\nHost: x\r\nX-Slow: yes\r\n":  # a byte every 0.1 s: ~5 s in all
            s.send(bytes([byte]))
            time.sleep(0.1)
    except OSError:  # closed under it
        pass
    status, body, _ = answer(s)
    assert status == 408 and time.monotonic() - start < 3


def test_a_body_that_stops_halfway_gets_408_at_the_body_deadline(port):
    s = connect(port)
    s.send(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500000\r\n\r\n{")
    status, body, waited = answer(s)
    assert status == 408 and "body did not arrive within 1 s" in assert_error_body(body, 408)
    s = connect(port)  # and a chunked body that never ends
    s.send(b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n")
    assert answer(s)[0] == 408


def test_headers_over_the_bound_get_431_before_the_rest_is_read(port):
    s = connect(port)
    s.send(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000)  # no end of headers yet
    status, body, _ = answer(s)
    assert status == 431 and "8,192 bytes" in assert_error_body(body, 431)


@pytest.mark.parametrize(
    "framing", [b"Content-Length: -1", b"Content-Length: abc", b"Content-Length: 5\r\nTransfer-Encoding: chunked"]
)
def test_malformed_framing_gets_400_with_the_error_body(port, framing):
    s = connect(port)
    s.send(b"POST /predict HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n\r\nhello")
    status, body, _ = answer(s)
    assert status == 400 and "malformed HTTP request" in assert_error_body(body, 400)


def test_a_kept_alive_connection_idle_past_the_header_deadline_still_serves_its_next_request(port):
    s = connect(port)
    for _ in range(2):
        s.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert one_response(s).startswith(b"HTTP/1.1 200")
        time.sleep(1.5)  # idle between requests: uvicorn's keep-alive (5 s) governs, not the header deadline
    s.close()


def one_response(s: socket.socket) -> bytes:
    """One whole response on a kept-alive connection (its head, then Content-Length bytes of body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    length = int(next(line.split(b":")[1] for line in lines if line.startswith(b"content-length")))
    while len(body) < length:
        body += s.recv(65536)
    return head + b"\r\n\r\n" + body


def test_past_the_connection_bound_the_oldest_idle_connections_make_room_and_probes_answer(weights_file, tmp_path):
    """With RNNLM_MAX_CONNECTIONS=8, 20 idle connections (a slowloris's) cannot take the process's descriptors:
    each new one closes the oldest idle one with 503, a probe on a fresh connection answers at once, and once the
    flood is gone requests are served as before."""
    base, proc = start_server(weights_file, tmp_path / "server.log", RNNLM_MAX_CONNECTIONS="8")
    port = int(base.rsplit(":", 1)[1])
    idle = []
    try:
        for _ in range(20):
            idle.append(connect(port))
            time.sleep(0.02)
        closed = []
        for s in idle[:12]:
            s.settimeout(2)
            status, body, _ = answer(s)
            closed.append(status)
            assert "waited longest" in assert_error_body(body, 503)
        assert closed == [503] * 12  # the 12 oldest
        start = time.monotonic()
        probe = connect(port)
        probe.send(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, _, _ = answer(probe)
        assert status == 200 and time.monotonic() - start < 1
    finally:
        for s in idle:
            s.close()
        time.sleep(0.2)
    try:
        body = b'{"prefix": "All:", "num_tokens": 3}'
        s = connect(port)
        s.send(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n")
        s.send(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        assert answer(s)[0] == 200
    finally:
        stop_server(proc)


def test_by_default_the_connection_bound_leaves_descriptors_to_spare(monkeypatch):
    """Under `ulimit -n 256` a flood of 300 sockets took every descriptor: by default the bound is the open-file
    limit less 64, so connections are closed before accept() fails."""
    import resource

    from app import http_protocol

    monkeypatch.delenv("RNNLM_MAX_CONNECTIONS", raising=False)
    monkeypatch.setattr(resource, "getrlimit", lambda which: (256, 4096))
    http_protocol._bounds.cache_clear()
    try:
        assert http_protocol._bounds()[3] == 256 - http_protocol.DESCRIPTORS_KEPT
        monkeypatch.setenv("RNNLM_MAX_CONNECTIONS", "40")
        http_protocol._bounds.cache_clear()
        assert http_protocol._bounds()[3] == 40
    finally:
        http_protocol._bounds.cache_clear()
