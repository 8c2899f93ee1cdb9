"""The fake XNAT as an HTTP server: keep-alive, concurrency, robustness, switches, accounting."""

from __future__ import annotations

import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate

import pytest
import requests

from xnatfs.fake import FakeXnat

E1 = "XNAT_E00001"
DICOM_FILE = f"/data/experiments/{E1}/scans/2/resources/DICOM/files/2-0001.dcm"


def raw_exchange(server: FakeXnat, payload: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, return everything the server answers until it closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(payload)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)


def test_keep_alive_reuses_one_connection(fake_xnat, http):
    for _ in range(5):
        assert http.get(fake_xnat.url + "/data/projects?format=json").status_code == 200
    pool = http.get_adapter(fake_xnat.url).poolmanager
    connections = [p for p in pool.pools._container.values()]
    assert len(connections) == 1
    assert connections[0].num_connections == 1


def test_many_concurrent_downloads(fake_xnat, http):
    expected = http.get(fake_xnat.url + DICOM_FILE).content

    def fetch(_):
        with requests.Session() as own:
            own.auth = (fake_xnat.username, fake_xnat.password)
            return own.get(fake_xnat.url + DICOM_FILE).content

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(fetch, range(64)))
    assert all(r == expected for r in results)
    assert len(expected) > 1000


def test_head_gives_length_without_body(fake_xnat, http):
    head = http.head(fake_xnat.url + DICOM_FILE)
    full = http.get(fake_xnat.url + DICOM_FILE)
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["Content-Length"]) == len(full.content)
    assert "Last-Modified" in head.headers
    assert "ETag" not in head.headers


def test_range_ignored_by_default(fake_xnat, http):
    response = http.get(fake_xnat.url + DICOM_FILE, headers={"Range": "bytes=0-9"})
    assert response.status_code == 200
    assert len(response.content) > 10


def test_range_honoured_when_switched_on(fake_xnat, http):
    full = http.get(fake_xnat.url + DICOM_FILE).content
    fake_xnat.honour_range = True
    part = http.get(fake_xnat.url + DICOM_FILE, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206
    assert part.content == full[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(full)}"
    tail = http.get(fake_xnat.url + DICOM_FILE, headers={"Range": "bytes=-5"})
    assert tail.content == full[-5:]
    beyond = http.get(fake_xnat.url + DICOM_FILE, headers={"Range": f"bytes={len(full)}-"})
    assert beyond.status_code == 416


def test_garbage_requests_get_4xx_and_server_keeps_serving(fake_xnat, http):
    answers = [
        raw_exchange(fake_xnat, b"NONSENSE\r\n\r\n"),
        raw_exchange(fake_xnat, b"GET /data/projects HTTP/1.1\r\nContent-Length: abc\r\n\r\n"),
        raw_exchange(fake_xnat, b"GET /%%%/.. HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        raw_exchange(fake_xnat, b"\x00\xff\xfe garbage \r\n\r\n"),
    ]
    for answer in answers:
        if answer.startswith(b"HTTP/1."):
            status = int(answer.split(b" ", 2)[1])
        else:
            # A request line without a version is answered the HTTP/0.9 way: no status line.
            status = int(answer.split(b"Error code: ", 1)[1][:3])
        assert 400 <= status < 500, answer[:120]
    malformed_chunks = (
        b"PUT /data/projects/STUDY01/resources/X/files/a.txt?inbody=true HTTP/1.1\r\n"
        b"Authorization: Basic YWRtaW46YWRtaW4=\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nabc\r\n"
    )
    assert b" 400 " in raw_exchange(fake_xnat, malformed_chunks).split(b"\r\n", 1)[0]
    cut_upload = (
        b"PUT /data/projects/STUDY01/resources/X/files/b.txt?inbody=true HTTP/1.1\r\n"
        b"Authorization: Basic YWRtaW46YWRtaW4=\r\nContent-Length: 100000\r\n\r\n"
        b"only the start"
    )
    with socket.create_connection(("127.0.0.1", fake_xnat.port), timeout=5) as sock:
        sock.sendall(cut_upload)
        sock.shutdown(socket.SHUT_WR)
        assert b" 400 " in sock.recv(65536).split(b"\r\n", 1)[0]
    assert os.listdir(fake_xnat.store.tmp_dir) == []  # nothing left of the broken uploads
    assert http.get(fake_xnat.url + "/data/no/such/thing").status_code == 404
    assert http.get(fake_xnat.url + "/nothing-here").status_code == 404
    assert http.get(fake_xnat.url + "/data/projects?format=json").status_code == 200


def test_half_sent_request_does_not_block_others(fake_xnat, http):
    with socket.create_connection(("127.0.0.1", fake_xnat.port)) as stuck:
        stuck.sendall(b"PUT /data/projects/STUDY01 HTTP/1.1\r\nContent-Length: 1000\r\n\r\nabc")
        started = time.monotonic()
        assert http.get(fake_xnat.url + "/data/projects?format=json").status_code == 200
        assert time.monotonic() - started < 2


def test_latency_is_added(fake_xnat, http):
    http.get(fake_xnat.url + "/data/projects?format=json")
    fake_xnat.latency_ms = 150
    started = time.monotonic()
    http.get(fake_xnat.url + "/data/projects?format=json")
    assert time.monotonic() - started >= 0.15


def test_error_faults_answer_5xx(fake_xnat, http):
    fake_xnat.set_faults(error_rate=1.0, error_statuses=(503,), seed=1)
    response = http.get(fake_xnat.url + "/data/projects?format=json")
    assert response.status_code == 503
    assert "<h3>" in response.text
    fake_xnat.set_faults()
    assert http.get(fake_xnat.url + "/data/projects?format=json").status_code == 200


def test_error_rate_is_a_fraction(fake_xnat, http):
    fake_xnat.set_faults(error_rate=0.5, seed=7)
    statuses = [http.get(fake_xnat.url + "/data/projects?format=json").status_code for _ in range(60)]
    failures = sum(1 for s in statuses if s >= 500)
    assert 10 < failures < 50


@pytest.mark.parametrize("kind", ["drop_rate", "truncate_rate"])
def test_cut_bodies_are_detected_by_clients(fake_xnat, http, kind):
    size = int(http.head(fake_xnat.url + DICOM_FILE).headers["Content-Length"])
    fake_xnat.set_faults(**{kind: 1.0})
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        http.get(fake_xnat.url + DICOM_FILE)
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        http.get(fake_xnat.url + f"/data/experiments/{E1}/scans/2/files?format=zip")
    with pytest.raises(requests.exceptions.ConnectionError):  # no body: the head is cut
        http.head(fake_xnat.url + DICOM_FILE)
    fake_xnat.set_faults()
    assert len(http.get(fake_xnat.url + DICOM_FILE).content) == size


def test_truncated_answer_promises_more_than_it_sends(fake_xnat):
    fake_xnat.set_faults(truncate_rate=1.0)
    answer = raw_exchange(
        fake_xnat, (f"GET {DICOM_FILE} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic YWRtaW46YWRtaW4=\r\n\r\n").encode()
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = int(next(line.split(b":")[1] for line in lines if line.lower().startswith(b"content-length")))
    assert 0 < len(body) < length


def test_stall_delays_answers(fake_xnat, http):
    fake_xnat.set_faults(stall_ms=200, stall_rate=1.0)
    started = time.monotonic()
    assert http.get(fake_xnat.url + "/data/projects?format=json").status_code == 200
    assert time.monotonic() - started >= 0.2


def test_bad_fault_rates_are_refused(fake_xnat):
    with pytest.raises(ValueError):
        fake_xnat.set_faults(error_rate=1.5)


def test_request_accounting(fake_xnat, http):
    fake_xnat.reset_counts()
    http.get(fake_xnat.url + "/data/projects?format=json")
    http.get(fake_xnat.url + "/data/projects/STUDY01/subjects?format=json")
    http.head(fake_xnat.url + DICOM_FILE)
    http.get(fake_xnat.url + "/data/projects/NOPE?format=json")
    assert fake_xnat.count() == 4
    assert fake_xnat.count(method="HEAD") == 1
    assert fake_xnat.count(path_prefix="/data/projects") == 3
    assert fake_xnat.count(method="get", path_prefix="/data/projects/STUDY01") == 1
    assert ("GET", "/data/projects/NOPE?format=json", 404) in fake_xnat.requests
    fake_xnat.reset_counts()
    assert fake_xnat.count() == 0


def test_accounting_is_thread_safe(fake_xnat):
    fake_xnat.reset_counts()

    def hammer(_):
        with requests.Session() as own:
            for _ in range(10):
                own.get(fake_xnat.url + "/data/projects", auth=("admin", "admin"))

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert fake_xnat.count(path_prefix="/data/projects") == 80


def test_data_survives_restart(tmp_path):
    data = tmp_path / "data"
    with FakeXnat(data) as first:
        first.store.add_project("KEEP")
        subject = first.store.add_subject("KEEP", "S1")
        experiment = first.store.add_experiment("KEEP", "S1", "S1_E1")
        first.store.put_file(experiment, "QC", "a.txt", b"kept bytes")
    with FakeXnat(data, sample="small") as second:
        assert [p["id"] for p in second.store.projects()] == ["KEEP"]
        assert second.store.subject_id("KEEP", "S1") == subject
        answer = requests.get(
            f"{second.url}/data/experiments/{experiment}/resources/QC/files/a.txt", auth=("admin", "admin")
        )
        assert answer.content == b"kept bytes"


def test_stop_closes_open_connections(tmp_path):
    server = FakeXnat(tmp_path / "data").start()
    session = requests.Session()
    assert session.get(server.url + "/data/projects", auth=("admin", "admin")).status_code == 200
    server.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        session.get(server.url + "/data/projects", auth=("admin", "admin"), timeout=5)
    server.close()


def test_curl_keep_alive_and_download(fake_xnat, http, tmp_path):
    import shutil
    import subprocess

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    expected = http.get(fake_xnat.url + DICOM_FILE).content
    first, second = tmp_path / "1.dcm", tmp_path / "2.dcm"
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "-v",
            "-u",
            "admin:admin",
            "-o",
            str(first),
            fake_xnat.url + DICOM_FILE,
            "-o",
            str(second),
            fake_xnat.url + DICOM_FILE,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert first.read_bytes() == expected == second.read_bytes()
    assert "Re-using existing connection" in result.stderr or "Reusing existing" in result.stderr


def test_each_answer_is_one_version_of_a_file_replaced_meanwhile(fake_xnat):
    versions = {
        b"a" * 1000: formatdate(1_000_000_000, usegmt=True),
        b"b" * 300_000: formatdate(1_100_000_000, usegmt=True),
    }
    store = fake_xnat.store
    store.put_file(E1, "RAW", "changing.bin", b"a" * 1000, mtime=1_000_000_000)
    address = fake_xnat.url + f"/data/experiments/{E1}/resources/RAW/files/changing.bin"
    stop = threading.Event()

    def replace_repeatedly():
        while not stop.is_set():
            store.put_file(E1, "RAW", "changing.bin", b"b" * 300_000, mtime=1_100_000_000)
            store.put_file(E1, "RAW", "changing.bin", b"a" * 1000, mtime=1_000_000_000)

    writer = threading.Thread(target=replace_repeatedly)
    writer.start()
    try:
        with requests.Session() as http:
            http.auth = (fake_xnat.username, fake_xnat.password)
            for _ in range(150):
                answer = http.get(address, timeout=10)
                assert versions.get(answer.content) == answer.headers["Last-Modified"]
    finally:
        stop.set()
        writer.join(10)


def test_a_client_resetting_its_connection_is_no_error_of_the_server(fake_xnat, http, caplog):
    # A mount abandoning a zip at unmount resets its connection: logged without a traceback,
    # which the file system tests take for a failure.
    caplog.set_level("DEBUG", logger="xnatfs.fake")
    host, port = fake_xnat.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as conn:
        conn.sendall(b"GET /data/projects HTTP/1.1\r\nHost: x\r\n\r\n")
        assert conn.recv(4096).startswith(b"HTTP/1.1 ")
        time.sleep(0.2)  # the whole answer is out; the server waits for the next request
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    deadline = time.monotonic() + 5
    while "closed by the client" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "closed by the client" in caplog.text
    assert not [r for r in caplog.records if r.name.startswith("xnatfs.fake") and r.exc_info]
    assert http.get(fake_xnat.url + "/data/projects", params={"format": "json"}).status_code == 200
