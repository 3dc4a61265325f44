"""A body over the size limit is answered 413 whatever the client does: also one that sends its
whole body before it reads the answer (urllib), not only one that waits for `100 Continue`."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest

from tests.service_support import rank_body, running_service

BIG = 8 * 2**20


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_service(tmp_path_factory.mktemp("faults-http") / "data") as running:
        yield running


def test_urllib_sending_8_mib_reads_the_413(server):
    request = urllib.request.Request(f"{server.url}/v1/rank", data=b" " * BIG, headers={"content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 413
    assert b'"field": "body"' in refused.value.read()


def test_chunked_body_sent_whole_before_reading_gets_the_413(server):
    """No content-length: the limit is found while reading; the rest is still read and dropped."""
    chunk = b" " * 2**20
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/rank HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(BIG // len(chunk)):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        sock.sendall(b"0\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_a_client_waiting_for_100_continue_gets_the_413_without_sending_the_body(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/rank HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\nexpect: 100-continue\r\n\r\n" % BIG)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_the_service_serves_on_after_refusing(server):
    import httpx

    assert httpx.post(f"{server.url}/v1/rank", json=rank_body(), timeout=10).status_code == 200
