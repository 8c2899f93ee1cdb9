"""Security of a mount: secrets stay secret, private folders stay private, TLS is checked.

- The password reaches no log (even at DEBUG), no process argument list, no
  error message, no ``--help`` text, no cache or spool file.
- Cache and spool folders are 0700 and their files 0600, even under umask 000.
- TLS certificates are verified unless ``--insecure`` is given.
- Without ``-o allow_other`` another user cannot even list the mount.
"""

from __future__ import annotations

import os
import shutil
import ssl
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from mountutil import isolated_env, mounted, unmount_quietly, xnatfs_command
from test_reliability_common import Relay
from xnatfs.client.connection import XnatConnection
from xnatfs.errors import XnatServerError
from xnatfs.fake import FakeXnat

pytestmark = pytest.mark.mount

PASSWORD = "Pw-7Zq!k3v9_secret"
USER = "researcher"
SESSION = "STUDY01/SUB001/SUB001_MR1"
NOBODY = 65534


@pytest.fixture
def guarded_xnat(fake_xnat_template, tmp_path):
    """The small sample study behind a distinctive password, so that any leak can be found by grep."""
    data = tmp_path / "guarded-xnat"
    shutil.copytree(fake_xnat_template / "archive", data / "archive", copy_function=os.link)
    for name in os.listdir(fake_xnat_template):
        if name != "archive" and (fake_xnat_template / name).is_file():
            shutil.copy2(fake_xnat_template / name, data / name)
    server = FakeXnat(data, users={USER: PASSWORD}).start()
    yield server
    server.close()


def files_containing(folder: Path, secret: bytes) -> list[Path]:
    found = []
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink() and secret in path.read_bytes():
            found.append(path)
    return found


def run_cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        xnatfs_command(*args), env=isolated_env(home, **env), capture_output=True, text=True, timeout=60
    )


def test_password_in_no_log_argument_list_cache_or_spool_file(guarded_xnat, tmp_path):
    secret = PASSWORD.encode()
    with mounted(
        guarded_xnat.url, tmp_path, user=USER, password=PASSWORD, ttl=1, expected_errors=(r"HTTP 500",)
    ) as mount:
        qc = mount.path / SESSION / "RESOURCES/QC"
        for path in sorted(qc.iterdir()):
            path.read_bytes()
        (qc / "notes.txt").write_bytes(b"written through the mount\n")
        # Sessions end on the server: the daemon logs in again, at DEBUG.
        guarded_xnat.auth.end_all_sessions()
        dicom = mount.path / SESSION / "SCANS/2-T1w_MPRAGE/DICOM"
        assert all(path.read_bytes() for path in sorted(dicom.iterdir())[:3])
        # A refused upload stays in the spool.
        guarded_xnat.set_faults(error_rate=1.0, error_statuses=(500,))
        with pytest.raises(OSError):
            (qc / "refused.txt").write_bytes(b"kept in the spool\n")
        guarded_xnat.set_faults()
        cmdline = Path(f"/proc/{mount.process.pid}/cmdline").read_bytes()
        assert secret not in cmdline
        assert b"mount" in cmdline
        assert secret not in Path(f"/proc/{mount.process.pid}/comm").read_bytes()
        assert list((mount.cache_dir / "spool" / "records").glob("*.json")), "the refused upload was not kept"
        assert files_containing(mount.cache_dir, secret) == []
    log = mount.log()
    assert "logging in again" in log or "expired" in log, "no renewal happened, the check proves little"
    assert "DEBUG" in log
    assert PASSWORD not in log
    assert files_containing(tmp_path / "home", secret) == []
    assert files_containing(mount.cache_dir, secret) == []


def test_password_in_no_error_message_or_help_text(guarded_xnat, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    wrong = "Wr0ng-" + PASSWORD
    refused = run_cli(home, "mount", guarded_xnat.url, str(mountpoint), "--foreground", XNAT_USER=USER, XNAT_PASS=wrong)
    assert refused.returncode != 0
    assert "refused" in refused.stderr
    assert wrong not in refused.stdout + refused.stderr
    # Credentials written into the address are not repeated back either.
    host = guarded_xnat.url.split("://", 1)[1]
    in_url = run_cli(
        home,
        "mount",
        f"http://{USER}:{PASSWORD}@{host}",
        str(mountpoint),
        "--foreground",
        XNAT_USER=USER,
        XNAT_PASS=wrong,
    )
    assert in_url.returncode != 0
    assert PASSWORD not in in_url.stdout + in_url.stderr
    unreachable = run_cli(
        home, "mount", "http://127.0.0.1:9", str(mountpoint), "--foreground", XNAT_USER=USER, XNAT_PASS=PASSWORD
    )
    assert unreachable.returncode != 0 and unreachable.stderr.strip()
    assert PASSWORD not in unreachable.stdout + unreachable.stderr
    for args in (("--help",), ("mount", "--help"), ("uploads", "list"), ("cache", "info")):
        shown = run_cli(home, *args, XNAT_USER=USER, XNAT_PASS=PASSWORD)
        assert shown.returncode == 0, (args, shown.stderr)
        assert PASSWORD not in shown.stdout + shown.stderr, args
    assert files_containing(home, PASSWORD.encode()) == []


def test_cache_and_spool_are_private_even_under_umask_000(guarded_xnat, tmp_path):
    previous = os.umask(0)
    try:
        with mounted(guarded_xnat.url, tmp_path, user=USER, password=PASSWORD, expected_errors=(r"HTTP 500",)) as mount:
            qc = mount.path / SESSION / "RESOURCES/QC"
            for path in sorted(qc.iterdir()):
                path.read_bytes()
            series = mount.path / SESSION / "SCANS/3-T2w_SPC/DICOM"
            for path in sorted(series.iterdir()):
                path.read_bytes()
            guarded_xnat.set_faults(error_rate=1.0, error_statuses=(500,))
            with pytest.raises(OSError):
                (qc / "pending.txt").write_bytes(b"waits in the spool\n")
            guarded_xnat.set_faults()
            checked = 0
            for folder, _dirs, names in os.walk(mount.cache_dir):
                assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700, folder
                for name in names:
                    path = Path(folder) / name
                    assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
                    checked += 1
            assert checked > 10
            assert list((mount.cache_dir / "spool" / "data").iterdir())
    finally:
        os.umask(previous)


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def tls_relay(upstream: str, cert: Path, key: Path) -> Relay:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return Relay(upstream, tls=context)


def test_tls_certificates_are_verified_by_default(guarded_xnat, self_signed, tmp_path):
    cert, key = self_signed
    with tls_relay(guarded_xnat.url, cert, key) as relay:
        assert relay.url.startswith("https://")
        with pytest.raises(XnatServerError) as refused:
            XnatConnection(relay.url, USER, PASSWORD, retries=0).list_projects()
        assert "certificate" in str(refused.value)
        assert PASSWORD not in str(refused.value)
        # The same server is fine once its certificate is trusted: the refusal was about trust.
        with XnatConnection(relay.url, USER, PASSWORD, verify=str(cert)) as trusted:
            assert {p.id for p in trusted.list_projects()} == {"STUDY01", "STUDY02"}
        home = tmp_path / "home"
        home.mkdir()
        mountpoint = tmp_path / "mnt"
        mountpoint.mkdir()
        failed = run_cli(home, "mount", relay.url, str(mountpoint), "--foreground", XNAT_USER=USER, XNAT_PASS=PASSWORD)
        assert failed.returncode != 0
        assert "certificate" in failed.stderr or "TLS" in failed.stderr
        assert os.listdir(mountpoint) == []
        with mounted(relay.url, tmp_path, user=USER, password=PASSWORD, args=("--insecure",), name="insecure") as mount:
            assert "STUDY01" in os.listdir(mount.path)


def test_without_allow_other_another_user_cannot_look_in(guarded_xnat, tmp_path):
    # A folder everyone may walk through, so that only the mount itself can say no.
    base = Path(tempfile.mkdtemp(prefix="xnatfs-allow-other-"))
    try:
        os.chmod(base, 0o755)

        def as_nobody(path: Path) -> subprocess.CompletedProcess:
            return subprocess.run(
                ["ls", str(path)],
                user=NOBODY,
                group=NOBODY,
                extra_groups=[],
                capture_output=True,
                text=True,
                timeout=30,
                cwd="/",
                env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
            )

        (base / "mnt").mkdir()
        os.chmod(base / "mnt", 0o755)
        assert as_nobody(base / "mnt").returncode == 0, "nobody cannot even see the empty folder"
        with mounted(guarded_xnat.url, base, user=USER, password=PASSWORD) as mount:
            assert "STUDY01" in os.listdir(mount.path)
            denied = as_nobody(mount.path)
            assert denied.returncode != 0
            assert "Permission denied" in denied.stderr
            denied_deeper = as_nobody(mount.path / "STUDY01")
            assert denied_deeper.returncode != 0
        with mounted(
            guarded_xnat.url, base, user=USER, password=PASSWORD, args=("-o", "allow_other"), name="shared"
        ) as mount:
            allowed = as_nobody(mount.path)
            assert allowed.returncode == 0, allowed.stderr
    finally:
        for name in ("mnt", "shared"):
            unmount_quietly(base / name)
        shutil.rmtree(base, ignore_errors=True)
