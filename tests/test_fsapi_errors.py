"""What the handlers answer when the server says no or fails: each status as the errno a caller sees."""

from __future__ import annotations

import errno
import hashlib
from contextlib import contextmanager

from fsapi import errno_of
from xnatfs.client.connection import XnatConnection

SESSION = "STUDY01/SUB001/SUB001_MR1"
QC = f"{SESSION}/RESOURCES/QC"
QC_URI = "/data/experiments/XNAT_E00001/resources/QC"
LONG_TTL = 600.0


@contextmanager
def failing(server, status: int):
    server.set_faults(error_rate=1.0, error_statuses=(status,))
    try:
        yield
    finally:
        server.set_faults()


def test_a_failing_listing_is_eio_with_a_log_line_naming_url_and_status_and_then_recovers(fake_xnat, run_fs):
    async def body(fs):
        await fs.listdir("")
        with failing(fake_xnat, 503):
            assert await errno_of(fs.listdir("STUDY01")) == errno.EIO
        assert "SUB001" in await fs.listdir("STUDY01")

    log = run_fs(body, expected_errors=[r"failed: .*503"]).log.text()
    assert any(
        "503" in line and "/data/projects/STUDY01/" in line for line in log.splitlines() if line.startswith("ERROR")
    ), log


def test_a_failing_write_is_eio_with_a_log_line_naming_url_and_status(fake_xnat, run_fs):
    async def body(fs):
        await fs.listdir("STUDY01")
        with failing(fake_xnat, 502):
            assert await errno_of(fs.mkdir("STUDY01/SUB061")) == errno.EIO

    log = run_fs(body, expected_errors=[r"mkdir.* failed: .*502"]).log.text()
    failures = [line for line in log.splitlines() if line.startswith("ERROR") and "mkdir" in line]
    assert any("/data/projects/STUDY01/subjects/SUB061" in line and "502" in line for line in failures), log


def test_forbidden_and_refused_login_are_eacces_and_credentials_stay_out_of_the_log(fake_xnat, run_fs):
    async def body(fs):
        await fs.listdir("STUDY01")
        with failing(fake_xnat, 403):
            assert await errno_of(fs.listdir("STUDY02")) == errno.EACCES
            assert await errno_of(fs.mkdir("STUDY01/SUB077")) == errno.EACCES
        with failing(fake_xnat, 401):
            assert await errno_of(fs.mkdir("STUDY01/SUB062")) == errno.EACCES

    log = run_fs(body).log.text()
    assert "refused" in log
    assert "admin:admin" not in log


def test_gone_on_the_server_meanwhile_is_enoent_and_taken_meanwhile_is_eexist(fake_xnat, run_fs):
    async def body(fs):
        name = next(n for n in await fs.listdir(QC) if n.endswith(".csv"))
        assert "SUB060" not in await fs.listdir("STUDY01")
        with XnatConnection(fake_xnat.url, "admin", "admin") as conn:
            conn.delete_file(QC_URI, name)  # behind the mount's back; its listing still has it
            conn.create_subject("STUDY01", "SUB060")
        assert await errno_of(fs.unlink(f"{QC}/{name}")) == errno.ENOENT
        assert await errno_of(fs.mkdir("STUDY01/SUB060")) == errno.EEXIST

    run_fs(body, ttl=LONG_TTL)


def test_an_upload_the_server_refuses_is_einval_and_shown_as_refused(fake_xnat, run_fs):
    async def body(fs):
        fh = await fs.open(f"{QC}/refused.csv", 0o101)  # O_WRONLY | O_CREAT
        await fs.ops.write(fh, 0, b"a,b\n1,2\n")
        with failing(fake_xnat, 400):
            assert await errno_of(fs.close(fh)) == errno.EINVAL
        assert await fs.getxattr(f"{QC}/refused.csv", "user.xnat.upload") == b"refused"
        assert b"400" in await fs.getxattr(f"{QC}/refused.csv", "user.xnat.upload_error")

    run_fs(body, expected_errors=[r"refused\.csv.*refused"])


def test_a_failed_download_is_eio_and_caches_nothing(fake_xnat, run_fs):
    async def body(fs):
        name = next(n for n in await fs.listdir(QC) if n.endswith(".csv"))
        with failing(fake_xnat, 500):
            assert await errno_of(fs.read(f"{QC}/{name}")) == errno.EIO
        data = await fs.read(f"{QC}/{name}")
        assert hashlib.md5(data).hexdigest().encode() == await fs.getxattr(f"{QC}/{name}", "user.xnat.digest")

    run_fs(body, expected_errors=[r"failed: .*500"])
