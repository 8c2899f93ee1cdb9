"""Large download bodies, read straight from the socket into one buffer.

A body of several MiB is not split into a bytes object per piece; what can
go wrong on the socket must still come out as the client's usual errors: a
body that stops coming is a timeout, one cut short is resumed.
"""

from __future__ import annotations

import io
import os
import socket
import threading

import pytest

from xnatfs.client.credentials import Credentials
from xnatfs.client.http import DIRECT_READ_BYTES, XnatSession
from xnatfs.errors import XnatTimeout

SIZE = DIRECT_READ_BYTES + (1 << 20)


class StallingServer:
    """Answers every request with a 200 promising ``len(body)`` bytes, sends ``sent`` of them and then nothing."""

    def __init__(self, body: bytes, sent: int):
        self.body = body
        self.sent = sent
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        connection, _address = self.listener.accept()
        with connection:
            connection.recv(65536)
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(self.body)}\r\n\r\n".encode()
            connection.sendall(head + self.body[: self.sent])
            self.done.wait(30)

    def close(self) -> None:
        self.done.set()
        self.listener.close()
        self.thread.join(10)


def test_large_body_that_stops_coming_is_a_timeout():
    server = StallingServer(os.urandom(SIZE), DIRECT_READ_BYTES + 1000)
    session = XnatSession(server.url, timeout=0.5, retries=0)
    try:
        out = io.BytesIO()
        with pytest.raises(XnatTimeout, match="timed out"):
            session.download("/data/files/big.bin", out)
        # What arrived before the stall, up to the last whole read: a prefix to resume from.
        assert len(out.getvalue()) >= DIRECT_READ_BYTES - (1 << 20)
        assert server.body.startswith(out.getvalue())
    finally:
        session.close()
        server.close()


def test_large_body_is_read_whole(fake_xnat):
    data = os.urandom(SIZE)
    fake_xnat.store.put_file("XNAT_E00001", "RAW", "big.bin", data)
    session = XnatSession(fake_xnat.url, Credentials(fake_xnat.username, fake_xnat.password))
    try:
        out = io.BytesIO()
        uri = "/data/experiments/XNAT_E00001/resources/RAW/files/big.bin"
        assert session.download(uri, out) == SIZE
        assert out.getvalue() == data
        part = io.BytesIO()
        assert session.download(uri, part, offset=1000, length=SIZE - 2000) == SIZE - 2000
        assert part.getvalue() == data[1000:-1000]
    finally:
        session.close()
