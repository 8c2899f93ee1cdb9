"""Every row of the writing table (see xnatfs/fs/mutations.py), without a kernel, checked on the server."""

from __future__ import annotations

import errno
import io
import os
import zipfile

import pyfuse3
import pytest
import trio

from fsapi import SetattrFields, errno_of
from xnatfs.cache.spool import UploadSpool
from xnatfs.client.connection import XnatConnection
from xnatfs.fs.control import REFRESH_NAME
from xnatfs.fs.local import LocalFileNode

E1 = "XNAT_E00001"
SESSION = "STUDY01/SUB001/SUB001_MR1"
QC = f"{SESSION}/RESOURCES/QC"
QC_URI = f"/data/experiments/{E1}/resources/QC"
SHARED = "STUDY02/SUB001/SUB001_MR1"
NOT_UTF8 = os.fsdecode(b"weird\xff\xfename.bin")


@pytest.fixture
def conn(fake_xnat):
    with XnatConnection(fake_xnat.url, "admin", "admin") as connection:
        yield connection


def server_files(conn, resource_uri: str = QC_URI) -> dict[str, bytes]:
    found = {}
    for remote in conn.list_files(resource_uri):
        buffer = io.BytesIO()
        conn.download(remote.uri, buffer)
        found[remote.path] = buffer.getvalue()
    return found


async def first_csv(fs) -> str:
    return next(name for name in await fs.listdir(QC) if name.endswith(".csv"))


# ---- files --------------------------------------------------------------------


def test_the_work_per_file_of_a_copy_does_not_grow_with_the_files_before_it(conn, run_fs, monkeypatch):
    """Every lookup, stat and open in a folder shows our own files on top of the server's
    listing. Worked out anew each time, a copy of 2 000 files into one folder went from
    29 to 45 ms a file, against a server answering each upload in 23.5 ms throughout; what is
    worked out is now kept, and each new file is added to it."""
    made = []
    creating = LocalFileNode.__init__

    def counted(self, *args, **kwargs):
        made.append(1)
        creating(self, *args, **kwargs)

    monkeypatch.setattr(LocalFileNode, "__init__", counted)
    count = 150

    async def body(fs):
        await fs.mkdir(f"{QC}/copy")
        for number in range(count):
            path = f"{QC}/copy/f{number:04d}.txt"
            assert not await fs.exists(path)
            await fs.write(path, b"x")
            assert (await fs.stat(path)).st_size == 1
        assert len(await fs.listdir(f"{QC}/copy")) == count

    run_fs(body)
    assert len(server_files(conn)) >= count
    # One node made by the create and one showing it in the folder; anew each time, the
    # folder's nodes were made over and over: about count² / 2.
    assert len(made) <= 3 * count


def test_a_new_file_is_uploaded_on_close_and_listed_at_once(conn, run_fs):
    async def body(fs):
        await fs.write(f"{QC}/notes.txt", b"first version\n")
        assert server_files(conn)["notes.txt"] == b"first version\n"
        assert (await fs.stat(f"{QC}/notes.txt")).st_size == 14
        assert "notes.txt" in await fs.listdir(QC)
        assert await fs.read(f"{QC}/notes.txt") == b"first version\n"
        await fs.write(f"{QC}/notes.txt", b"second\n")  # overwrite, then append
        assert server_files(conn)["notes.txt"] == b"second\n"
        await fs.write(f"{QC}/notes.txt", b"more\n", append=True)
        assert server_files(conn)["notes.txt"] == b"second\nmore\n"
        assert (await fs.stat(f"{QC}/notes.txt")).st_size == 12
        csv = await first_csv(fs)  # a server file changed in place
        old = await fs.read(f"{QC}/{csv}")
        fh = await fs.open(f"{QC}/{csv}", os.O_RDWR)
        assert await fs.ops.write(fh, 0, b"X") == 1
        await fs.close(fh)
        assert server_files(conn)[csv] == b"X" + old[1:]
        assert await fs.getxattr(f"{QC}/{csv}", "user.xnat.upload") == b"uploaded"

    run_fs(body)


def test_small_writes_need_no_worker_thread(conn, run_fs):
    """Handing a write to a worker thread and back cost several times the write itself:
    ``tar x`` (10 KiB pieces) into the mount took 3× as long as ``cp`` of the same files.
    A small write into the file's open spool entry is done at once, even while every worker
    thread is busy; a large one still waits for a worker."""

    async def body(fs):
        limiter = fs.ops.limiter
        fh = await fs.open(f"{QC}/pieces.bin", os.O_WRONLY | os.O_CREAT)
        await fs.ops.write(fh, 0, b"head")
        busy = [object() for _ in range(int(limiter.total_tokens))]
        for holder in busy:
            await limiter.acquire_on_behalf_of(holder)
        try:
            with trio.fail_after(10):
                for number in range(1, 50):
                    assert await fs.ops.write(fh, number * 10240, b"%05d" % number * 2048) == 10240
            with trio.move_on_after(0.5) as waited:
                await fs.ops.write(fh, 50 * 10240, b"L" * (1 << 20))
            assert waited.cancelled_caught, "a large write did not need a worker thread"
        finally:
            for holder in busy:
                limiter.release_on_behalf_of(holder)
        await fs.close(fh)
        expected = b"head" + b"\0" * (10240 - 4) + b"".join(b"%05d" % n * 2048 for n in range(1, 50))
        assert server_files(conn)["pieces.bin"] == expected

    run_fs(body)


def test_fsync_uploads_before_close(conn, run_fs):
    async def body(fs):
        fh = await fs.open(f"{QC}/synced.bin", os.O_WRONLY | os.O_CREAT)
        await fs.ops.write(fh, 0, b"abc")
        assert "synced.bin" not in server_files(conn)
        await fs.ops.fsync(fh, False)
        assert server_files(conn)["synced.bin"] == b"abc"
        await fs.close(fh)

    run_fs(body)


def test_local_subfolders_exist_on_xnat_once_a_file_is_in_them_and_count_their_links(conn, run_fs):
    async def body(fs):
        await fs.listdir(QC)
        assert (await fs.stat(QC)).st_nlink == 2
        await fs.mkdir(f"{QC}/plots")
        await fs.mkdir(f"{QC}/plots/motion")
        assert await fs.is_dir(f"{QC}/plots/motion")
        assert (await fs.stat(QC)).st_nlink == 3
        assert (await fs.stat(f"{QC}/plots")).st_nlink == 3
        await fs.write(f"{QC}/plots/motion/fd.csv", b"0.1\n")
        assert server_files(conn)["plots/motion/fd.csv"] == b"0.1\n"
        await fs.mkdir(f"{QC}/empty-folder")
        await fs.mkdir(f"{QC}/empty-folder/a")
        assert await errno_of(fs.rmdir(f"{QC}/empty-folder")) == errno.ENOTEMPTY
        await fs.rmdir(f"{QC}/empty-folder/a")
        assert (await fs.stat(f"{QC}/empty-folder")).st_nlink == 2
        await fs.rmdir(f"{QC}/empty-folder")
        assert not await fs.exists(f"{QC}/empty-folder")
        # A folder inside a resource cannot be renamed: mv copies and deletes instead.
        assert await errno_of(fs.rename(f"{QC}/plots", f"{QC}/graphs")) == errno.EXDEV

    run_fs(body)


def test_truncate_by_path_and_removing_an_open_file(conn, run_fs):
    async def body(fs):
        csv = await first_csv(fs)
        old = await fs.read(f"{QC}/{csv}")
        assert (await fs.truncate(f"{QC}/{csv}", 10)).st_size == 10
        assert server_files(conn)[csv] == old[:10]
        assert (await fs.stat(f"{QC}/{csv}")).st_size == 10
        assert await errno_of(fs.truncate(f"{QC}/{csv}", 0)) == errno.ENOTSUP  # XNAT holds no empty files
        fh = await fs.open(f"{QC}/{csv}", os.O_WRONLY | os.O_TRUNC)
        assert await errno_of(fs.close(fh)) == errno.ENOTSUP
        assert await fs.read(f"{QC}/{csv}") == old[:10] and server_files(conn)[csv] == old[:10]
        fh = await fs.open(f"{QC}/scratch.tmp", os.O_RDWR | os.O_CREAT)
        inode = await fs.inode(f"{QC}/scratch.tmp")
        await fs.ops.write(fh, 0, b"temporary")
        await fs.unlink(f"{QC}/scratch.tmp")
        assert (await fs.ops.getattr(inode, None)).st_size == 9
        assert await fs.ops.read(fh, 0, 4) == b"temp"
        await fs.close(fh)
        assert "scratch.tmp" not in server_files(conn)
        assert "scratch.tmp" not in await fs.listdir(QC)

    run_fs(body)


def test_modes_owners_and_times_are_accepted_and_change_nothing(run_fs):
    async def body(fs):
        inode = await fs.inode(f"{QC}/qc_metrics.csv")
        before = await fs.ops.getattr(inode, None)
        attrs = pyfuse3.EntryAttributes()
        attrs.st_mode, attrs.st_mtime_ns = 0o600, 0
        fields = SetattrFields(update_mode=True, update_mtime=True, update_uid=True)
        after = await fs.ops.setattr(inode, attrs, fields, None, None)
        assert after.st_mode == before.st_mode and after.st_mtime_ns == before.st_mtime_ns

    run_fs(body)


# ---- folders: subjects, experiments, resources ----------------------------------


def test_mkdir_creates_subjects_experiments_and_resources(conn, run_fs):
    async def body(fs):
        await fs.mkdir("STUDY01/SUB050")
        assert "SUB050" in {s.label for s in conn.list_subjects("STUDY01")}
        await fs.mkdir("STUDY01/SUB050/SUB050_PET1")
        created = [e for e in conn.list_experiments("STUDY01") if e.label == "SUB050_PET1"]
        assert created and created[0].xsi_type == "xnat:petSessionData"  # the configured type
        assert sorted(await fs.listdir("STUDY01/SUB050/SUB050_PET1")) == ["RESOURCES", "SCANS"]
        await fs.mkdir("STUDY01/SUB050/SUB050_PET1/RESOURCES/NIFTI")
        assert [r.label for r in conn.get_experiment_contents(created[0].id).resources] == ["NIFTI"]
        await fs.mkdir(f"{SESSION}/SCANS/2/DERIVED")
        scan = next(s for s in conn.get_experiment_contents(E1).scans if s.id == "2")
        assert "DERIVED" in {r.label for r in scan.resources}
        await fs.mkdir("STUDY01/RESOURCES/DOCS")
        await fs.write("STUDY01/RESOURCES/DOCS/readme.md", b"# docs")
        assert await fs.listdir("STUDY01/RESOURCES/DOCS") == ["readme.md"]
        assert server_files(conn, "/data/projects/STUDY01/resources/DOCS") == {"readme.md": b"# docs"}
        await fs.mkdir("STUDY01/SUB050/RESOURCES/CONSENT")
        await fs.write("STUDY01/SUB050/RESOURCES/CONSENT/form.txt", b"signed")
        subject_id = (await fs.getxattr("STUDY01/SUB050", "user.xnat.id")).decode()
        assert server_files(conn, f"/data/projects/STUDY01/subjects/{subject_id}/resources/CONSENT") == {
            "form.txt": b"signed"
        }
        for bad, code in (
            ("bad label", errno.EINVAL),
            ("SUB001", errno.EEXIST),
            ("SCANS", errno.EINVAL),
            ("RESOURCES", errno.EEXIST),
        ):
            assert await errno_of(fs.mkdir(f"STUDY01/{bad}")) == code, bad
        assert await errno_of(fs.mkdir("STUDY01/SUB001/SCANS")) == errno.EINVAL
        assert await errno_of(fs.mkdir(f"{SESSION}/SCANS/99")) == errno.EPERM
        assert await errno_of(fs.mkdir("NEWPROJECT")) == errno.EPERM

    run_fs(body, experiment_type="xnat:petSessionData")
    labels = {s.label for s in conn.list_subjects("STUDY01")} | {e.label for e in conn.list_experiments("STUDY01")}
    assert not labels & {"SCANS", "RESOURCES", "bad label"}


def test_renames_of_subjects_experiments_and_files(conn, run_fs):
    async def body(fs):
        await fs.rename("STUDY01/SUB003", "STUDY01/SUB003B")
        assert "SUB003B" in {s.label for s in conn.list_subjects("STUDY01")}
        assert sorted(await fs.listdir("STUDY01/SUB003B")) == ["RESOURCES", "SUB003_MR1"]
        assert not await fs.exists("STUDY01/SUB003")
        await fs.rename("STUDY01/SUB003B/SUB003_MR1", "STUDY01/SUB003B/SUB003B_MR1")
        assert "SUB003B_MR1" in {e.label for e in conn.list_experiments("STUDY01")}
        assert await fs.listdir("STUDY01/SUB003B/SUB003B_MR1/SCANS")
        assert await errno_of(fs.rename("STUDY01/SUB002", "STUDY01/SUB003B")) == errno.EEXIST
        assert await errno_of(fs.rename("STUDY01/SUB002/SUB002_MR1", "STUDY01/SUB003B/SUB002_MR1")) == errno.EXDEV
        assert await errno_of(fs.rename("STUDY01/SUB002", "STUDY01/bad label")) == errno.EINVAL
        assert await errno_of(fs.rename("STUDY01/SUB001", "STUDY01/SCANS")) == errno.EINVAL
        assert await errno_of(fs.rename("STUDY01/SUB001", "STUDY01/RESOURCES")) == errno.EEXIST
        assert await errno_of(fs.rename("STUDY01/SUB002", "STUDY01/SUB009", pyfuse3.RENAME_EXCHANGE)) == errno.EINVAL
        csv = await first_csv(fs)
        data = await fs.read(f"{QC}/{csv}")
        await fs.rename(f"{QC}/{csv}", f"{QC}/renamed.csv")
        files = server_files(conn)
        assert files["renamed.csv"] == data and csv not in files
        assert await fs.read(f"{QC}/renamed.csv") == data and not await fs.exists(f"{QC}/{csv}")
        assert await errno_of(fs.rename(f"{QC}/renamed.csv", f"{SESSION}/SCANS/2/DICOM/renamed.csv")) == errno.EXDEV
        assert (
            await errno_of(fs.rename(f"{QC}/renamed.csv", f"{QC}/qc_report.pdf", pyfuse3.RENAME_NOREPLACE))
            == errno.EEXIST
        )

    run_fs(body)


def test_an_editor_style_save_replaces_the_target(conn, run_fs):
    async def body(fs):
        await fs.write(f"{QC}/config.json", b'{"v": 1}')
        await fs.write(f"{QC}/.config.json.swp", b'{"v": 2}')
        await fs.rename(f"{QC}/.config.json.swp", f"{QC}/config.json")
        files = server_files(conn)
        assert files["config.json"] == b'{"v": 2}' and ".config.json.swp" not in files
        assert await fs.read(f"{QC}/config.json") == b'{"v": 2}'
        assert ".config.json.swp" not in await fs.listdir(QC)

    run_fs(body)


def test_deleting_files_and_resources_and_refusing_the_rest(conn, run_fs):
    async def body(fs):
        pdf = next(name for name in await fs.listdir(QC) if name.endswith(".pdf"))
        await fs.unlink(f"{QC}/{pdf}")
        assert pdf not in server_files(conn) and pdf not in await fs.listdir(QC)
        assert await errno_of(fs.rmdir(QC)) == errno.ENOTEMPTY
        assert await errno_of(fs.unlink(QC)) == errno.EISDIR
        assert await errno_of(fs.rmdir(f"{QC}/qc_metrics.csv")) == errno.ENOTDIR
        for name in await fs.listdir(QC):
            await fs.unlink(f"{QC}/{name}")
        await fs.rmdir(QC)
        assert "QC" not in {r.label for r in conn.get_experiment_contents(E1).resources}
        assert "QC" not in await fs.listdir(f"{SESSION}/RESOURCES")
        for kept in ("STUDY01/SUB003/SUB003_MR1", "STUDY01/SUB003", "STUDY01"):
            assert await errno_of(fs.rmdir(kept)) == errno.EPERM
        assert await errno_of(fs.rmdir(f"{SESSION}/SCANS")) == errno.EPERM

    log = run_fs(body).log.text()
    assert "--allow-delete" in log
    assert "SUB003" in {s.label for s in conn.list_subjects("STUDY01")}


def test_a_file_deleted_behind_the_mount_is_enoent_at_rm_and_goes_from_the_listing_at_once(conn, run_fs):
    async def body(fs):
        pdf = next(name for name in await fs.listdir(QC) if name.endswith(".pdf"))
        conn.delete_file(QC_URI, pdf)
        assert pdf in await fs.listdir(QC)  # the listing is kept for the TTL...
        assert await errno_of(fs.unlink(f"{QC}/{pdf}")) == errno.ENOENT
        assert pdf not in await fs.listdir(QC)  # ...until the server says it is out of date

    run_fs(body)


def test_a_change_that_never_reached_the_server_keeps_its_folder_browsable(fake_xnat, run_fs):
    async def body(fs):
        before = await fs.listdir("STUDY01")
        fake_xnat.close()  # connections are refused from now on
        assert await errno_of(fs.mkdir("STUDY01/SUB078")) == errno.EIO
        assert await fs.listdir("STUDY01") == before  # the listing held, not EIO

    run_fs(body, expected_errors=[r"mkdir failed"])


def test_a_mkdir_whose_answer_never_came_shows_what_the_server_did(fake_xnat, conn, run_fs):
    async def body(fs):
        await fs.listdir("STUDY01")
        await errno_of(fs.stat("STUDY01/SUB093"))  # the kernel would keep this answer
        fake_xnat.set_faults(stall_ms=3_000, stall_rate=1.0, methods=("PUT",))  # made, answered late
        assert await errno_of(fs.mkdir("STUDY01/SUB093")) == errno.EIO
        assert "SUB093" in {s.label for s in conn.list_subjects("STUDY01")}
        assert "SUB093" in await fs.listdir("STUDY01")
        assert "SUB093" in fs.kernel.invalidated_names()

    run_fs(body, timeout=1.0, expected_errors=[r"mkdir failed"])


def test_allow_delete_lets_rmdir_delete_experiments_subjects_and_projects(conn, run_fs):
    async def body(fs):
        await fs.rmdir("STUDY01/SUB003/SUB003_MR1")
        assert "SUB003_MR1" not in {e.label for e in conn.list_experiments("STUDY01")}
        await fs.rmdir("STUDY01/SUB003")
        assert "SUB003" not in {s.label for s in conn.list_subjects("STUDY01")}
        assert "SUB003" not in await fs.listdir("STUDY01")
        await fs.rmdir("STUDY02")
        assert "STUDY02" not in {p.id for p in conn.list_projects()}
        assert "STUDY02" not in await fs.listdir("")

    run_fs(body, allow_delete=True)


def test_a_zip_in_scans_is_imported_and_other_files_there_are_eperm(fake_xnat, conn, run_fs):
    async def body(fs):
        series = f"{SESSION}/SCANS/3-T2w_SPC/DICOM"
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as bundle:
            for name in sorted(await fs.listdir(series)):
                bundle.writestr(name, await fs.read(f"{series}/{name}"))
        await fs.mkdir("STUDY01/SUB050")
        await fs.mkdir("STUDY01/SUB050/SUB050_MR1")
        await fs.write("STUDY01/SUB050/SUB050_MR1/SCANS/upload.zip", buffer.getvalue())
        assert "3-T2w_SPC" in await fs.listdir("STUDY01/SUB050/SUB050_MR1/SCANS")
        assert sorted(await fs.listdir("STUDY01/SUB050/SUB050_MR1/SCANS/3/DICOM")) == sorted(await fs.listdir(series))
        assert await errno_of(fs.write("STUDY01/SUB050/SUB050_MR1/SCANS/notes.txt", b"no")) == errno.EPERM
        # After its subject is renamed, an import still goes to the same session.
        await fs.rename("STUDY01/SUB050", "STUDY01/SUB051")
        subjects = {s.label for s in conn.list_subjects("STUDY01")}
        await fs.write("STUDY01/SUB051/SUB050_MR1/SCANS/again.zip", buffer.getvalue())
        assert {s.label for s in conn.list_subjects("STUDY01")} == subjects
        experiment_id = (await fs.getxattr("STUDY01/SUB051/SUB050_MR1", "user.xnat.id")).decode()
        assert [s.id for s in conn.get_experiment_contents(experiment_id).scans] == ["3"]

    run_fs(body)


# ---- refusals -----------------------------------------------------------------


def test_read_only_mounts_and_shared_experiments_refuse_every_change_with_erofs(fake_xnat, conn, run_fs):
    async def read_only(fs):
        assert (await fs.stat(QC)).st_mode & 0o777 == 0o555
        csv = await first_csv(fs)
        for attempt in (
            fs.write(f"{QC}/x.txt", b"x"),
            fs.mkdir(f"{QC}/new"),
            fs.unlink(f"{QC}/{csv}"),
            fs.mkdir("STUDY01/SUB009"),
            fs.rename("STUDY01/SUB001", "STUDY01/SUB009"),
            fs.open(f"{QC}/{csv}", os.O_RDWR),
            fs.truncate(f"{QC}/{csv}", 1),
            fs.rmdir("STUDY01/SUB003/SUB003_MR1"),
        ):
            assert await errno_of(attempt) == errno.EROFS
        assert await fs.read(f"{QC}/{csv}")

    async def shared(fs):
        for attempt in (
            fs.write(f"{SHARED}/RESOURCES/QC/x.txt", b"x"),
            fs.mkdir(f"{SHARED}/RESOURCES/NEW"),
            fs.rename(SHARED, "STUDY02/SUB001/RENAMED"),
        ):
            assert await errno_of(attempt) == errno.EROFS
        assert "QC" in await fs.listdir(f"{SHARED}/RESOURCES")

    before = server_files(conn)
    run_fs(read_only, read_only=True)
    run_fs(shared)
    assert server_files(conn) == before


def test_links_and_special_files_are_eperm(run_fs):
    async def body(fs):
        qc = await fs.inode(QC)
        csv = await fs.inode(f"{QC}/qc_metrics.csv")
        for attempt in (
            fs.ops.symlink(qc, b"link.csv", b"qc_metrics.csv", None),
            fs.ops.link(csv, qc, b"hard.csv", None),
            fs.ops.mknod(qc, b"fifo", 0o10644, 0, None),
        ):
            assert await errno_of(attempt) == errno.EPERM
        assert sorted(await fs.listdir(QC)) == ["qc_metrics.csv", "qc_report.pdf"]

    run_fs(body)


# ---- names --------------------------------------------------------------------


def test_names_xnat_cannot_store_are_refused_at_once(fake_xnat, conn, tmp_path, run_fs):
    refused = {
        name: errno.EINVAL
        for name in (
            "new\nline.txt",
            "tab\there.txt",
            "back\\slash.txt",
            "bell\x07.txt",
            "c1\u0085.txt",
            NOT_UTF8,
            REFRESH_NAME,
        )
    }
    refused[REFRESH_NAME] = errno.EPERM
    refused["x" * 256] = errno.ENAMETOOLONG

    async def body(fs):
        await fs.write(f"{QC}/fine.txt", b"fine")
        for name, code in refused.items():
            assert await errno_of(fs.write(f"{QC}/{name}", b"data")) == code, repr(name)
            assert await errno_of(fs.mkdir(f"{QC}/{name}")) == code, repr(name)
            assert await errno_of(fs.rename(f"{QC}/fine.txt", f"{QC}/{name}")) == code, repr(name)
        assert sorted(await fs.listdir(QC)) == ["fine.txt", "qc_metrics.csv", "qc_report.pdf"]

    log = run_fs(body).log.text()
    assert "XNAT cannot store the name" in log and "weird" in log
    assert "mkdir refused" in log and "mv refused" in log
    assert sorted(server_files(conn)) == ["fine.txt", "qc_metrics.csv", "qc_report.pdf"]
    assert UploadSpool(tmp_path / "fs-cache" / "spool").pending() == []


def test_names_with_spaces_accents_and_url_characters_round_trip(fake_xnat, conn, tmp_path, run_fs):
    # XNAT lists these in a file's URI unencoded; each must reach the server as the same name.
    names = ("%41.txt", "b0dwi+00001.dcm", "sp ace.txt", "ha#sh.txt", " résumé  final (v2) .txt")

    async def writer(fs):
        for name in names:
            await fs.write(f"{QC}/{name}", name.encode())

    async def reader(fs):
        assert set(names) <= set(await fs.listdir(QC))
        for name in names:
            assert await fs.read(f"{QC}/{name}") == name.encode(), name
            assert await fs.getxattr(f"{QC}/{name}", "user.xnat.uri")  # the server's entry
        await fs.rename(f"{QC}/b0dwi+00001.dcm", f"{QC}/b0dwi+00002.dcm")
        await fs.unlink(f"{QC}/ha#sh.txt")
        assert await fs.read(f"{QC}/b0dwi+00002.dcm") == b"b0dwi+00001.dcm"

    run_fs(writer)
    assert set(names) <= set(server_files(conn))
    run_fs(reader, cache_dir=tmp_path / "fresh-cache")
    stored = set(server_files(conn))
    assert {"b0dwi+00002.dcm", "%41.txt", "sp ace.txt"} <= stored
    assert not {"b0dwi+00001.dcm", "ha#sh.txt"} & stored


def test_reading_a_file_just_written_does_not_hide_the_servers_changes_to_it(fake_xnat, conn, run_fs):
    async def body(fs):
        await fs.write(f"{QC}/ours.txt", b"written here")
        conn.delete_file(QC_URI, "ours.txt")  # by another client, once it was sent
        with trio.fail_after(10):
            while True:
                try:
                    shown = await fs.read(f"{QC}/ours.txt")
                except pyfuse3.FUSEError as exc:
                    assert exc.errno == errno.ENOENT
                    break  # gone, as on the server
                assert shown == b"written here"
                await trio.sleep(0.05)

    run_fs(body, ttl=0.5)
