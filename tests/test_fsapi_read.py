"""Reading without a kernel: the handlers' tree, sizes, bytes, attributes, xattrs and names."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading

import pyfuse3
import trio

from fsapi import context, errno_of
from mountutil import removed_files_open, server_files
from xnatfs.cache.content import CachedFile, ContentCache
from xnatfs.fs import series
from xnatfs.fs.control import REFRESH_NAME, refresh
from xnatfs.fs.names import RESERVED

SESSION = "STUDY01/SUB001/SUB001_MR1"
SHARED = "STUDY02/SUB001/SUB001_MR1"


def downloads(server) -> list[str]:
    """Paths of file downloads (not listings) the server answered."""
    return [
        target.split("?", 1)[0]
        for method, target, _status in server.requests
        if method == "GET" and "/files/" in target.split("?", 1)[0]
    ]


async def walk(fs, folder: str = "") -> dict[str, pyfuse3.EntryAttributes]:
    """Every file below ``folder`` → its attributes as readdir gives them."""
    found = {}
    for name, attrs in await fs.entries(folder):
        if name in (".", ".."):
            continue
        path = f"{folder}/{name}" if folder else name
        if stat.S_ISDIR(attrs.st_mode):
            found.update(await walk(fs, path))
        else:
            found[path] = attrs
    return found


def dicom_resource(server) -> str:
    """The address of the DICOM resource :func:`dicom_dir` shows."""
    return f"/data/experiments/{server.store.experiment_id('STUDY01', 'SUB001_MR1')}/scans/2/resources/DICOM"


def hold_writes(monkeypatch, seconds: float) -> None:
    """A series' cache writes wait ``seconds`` for its readers' pause, and at most that after the zip."""
    monkeypatch.setattr(series, "QUIET_BEFORE_WRITING", seconds)
    monkeypatch.setattr(series, "LONGEST_WRITE_WAIT", seconds)


async def dicom_dir(fs) -> str:
    scans = await fs.listdir(f"{SESSION}/SCANS")
    return f"{SESSION}/SCANS/{next(name for name in scans if name.startswith('2-'))}/DICOM"


def test_tree_sizes_and_bytes_equal_the_server(fake_xnat, run_fs):
    expected = server_files(fake_xnat)
    assert len(expected) > 20

    async def body(fs):
        fake_xnat.reset_counts()
        seen = await walk(fs)
        assert {path: attrs.st_size for path, attrs in seen.items()} == {p: e.size for p, e in expected.items()}
        assert downloads(fake_xnat) == [], "listing and stat must never download"
        for path, record in expected.items():
            data = await fs.read(path)
            assert len(data) == record.size
            if record.digest:
                assert hashlib.md5(data).hexdigest() == record.digest, path

    # The server's own files; the BIDS view is made by the mount (tests/test_bids_view.py).
    run_fs(body, bids=False)


def test_modes_owners_times_and_link_counts(run_fs):
    async def body(fs):
        scans = f"{SESSION}/SCANS"
        names = await fs.listdir(scans)
        info = await fs.stat(scans)
        assert stat.S_ISDIR(info.st_mode) and info.st_mode & 0o777 == 0o755
        assert info.st_nlink == 2 + len(names)
        assert info.st_uid == os.getuid() and info.st_gid == os.getgid()
        some_file = f"{await dicom_dir(fs)}/{(await fs.listdir(await dicom_dir(fs)))[0]}"
        attrs = await fs.stat(some_file)
        assert stat.S_ISREG(attrs.st_mode) and attrs.st_mode & 0o777 == 0o644
        assert attrs.st_mtime_ns > 946684800 * 10**9  # an insert date, not the epoch
        assert attrs.st_blocks == (attrs.st_size + 511) // 512
        # cp, cat and Python's open size their buffers by it: 1 MiB per FUSE read or write, not 128 KiB;
        # glibc's opendir does too, and a folder's answers come a page at a time.
        assert attrs.st_blksize == 1 << 20 and info.st_blksize == 4096
        assert (await fs.stat(SHARED)).st_mode & 0o777 == 0o555
        shared_qc = f"{SHARED}/RESOURCES/QC"
        shared_file = f"{shared_qc}/{(await fs.listdir(shared_qc))[0]}"
        assert (await fs.stat(shared_file)).st_mode & 0o777 == 0o444

    run_fs(body)


def test_readdir_gives_dot_and_dotdot_with_their_inode_numbers_and_each_entry_once(run_fs):
    async def body(fs):
        for folder, parent in (
            ("", ""),
            (SESSION, "STUDY01/SUB001"),
            (f"{SESSION}/RESOURCES/QC", f"{SESSION}/RESOURCES"),
        ):
            entries = await fs.entries(folder, round_size=1)
            numbers = {name: attrs.st_ino for name, attrs in entries}
            assert len(numbers) == len(entries), "an entry came twice across readdir rounds"
            assert numbers["."] == await fs.inode(folder)
            assert numbers[".."] == await fs.inode(parent)
            assert sorted(set(numbers) - {".", ".."}) == sorted(await fs.listdir(folder))
            for name in set(numbers) - {".", ".."}:
                assert numbers[name] == await fs.inode(f"{folder}/{name}")

    run_fs(body)


def test_bare_scan_id_resolves_but_is_not_listed(run_fs):
    async def body(fs):
        listed = await fs.listdir(f"{SESSION}/SCANS")
        assert "2" not in listed and any(name.startswith("2-") for name in listed)
        assert sorted(await fs.listdir(f"{SESSION}/SCANS/2/DICOM")) == sorted(await fs.listdir(await dicom_dir(fs)))
        assert sorted(await fs.listdir(SESSION)) == sorted(RESERVED)

    run_fs(body)


def test_extended_attributes(run_fs):
    async def body(fs):
        scan = (await dicom_dir(fs)).rsplit("/", 1)[0]
        assert await fs.getxattr(scan, "user.xnat.id") == b"2"
        assert await fs.getxattr(scan, "user.xnat.type")
        assert await fs.getxattr(scan, "user.xnat.xsi_type") == b"xnat:mrScanData"
        assert b"/scans/2" in await fs.getxattr(scan, "user.xnat.uri")
        assert {"user.xnat.id", "user.xnat.uri", "user.xnat.xsi_type", "user.xnat.type"} <= set(
            await fs.listxattr(scan)
        )
        assert await fs.getxattr(SESSION, "user.xnat.label") == b"SUB001_MR1"
        assert (await fs.getxattr(SESSION, "user.xnat.id")).startswith(b"XNAT_E")
        assert await fs.getxattr("STUDY01/SUB001", "user.xnat.project") == b"STUDY01"
        folder = await dicom_dir(fs)
        some_file = f"{folder}/{sorted(await fs.listdir(folder))[0]}"
        digest = hashlib.md5(await fs.read(some_file)).hexdigest().encode()
        assert await fs.getxattr(some_file, "user.xnat.digest") == digest
        assert await fs.getxattr(some_file, "user.xnat.format") == b"DICOM"
        assert await errno_of(fs.getxattr(some_file, "user.xnat.nothing")) == pyfuse3.ENOATTR
        assert await errno_of(fs.getxattr(some_file, "user.other")) == pyfuse3.ENOATTR
        assert await errno_of(fs.ops.setxattr(await fs.inode(some_file), b"user.x", b"1", None)) == errno.ENOTSUP
        assert await errno_of(fs.ops.removexattr(await fs.inode(some_file), b"user.xnat.id", None)) == errno.ENOTSUP

    run_fs(body)


def test_namespaces_other_than_user_are_not_supported(run_fs):
    # ls -l stops asking a device for SELinux labels and ACLs once it answers ENOTSUP (LAYOUT.md).
    async def body(fs):
        folder = await dicom_dir(fs)
        some_file = f"{folder}/{sorted(await fs.listdir(folder))[0]}"
        for path in (some_file, folder, SESSION, ""):
            for name in ("security.selinux", "system.posix_acl_access", "system.posix_acl_default", "trusted.x"):
                assert await errno_of(fs.getxattr(path, name)) == errno.ENOTSUP, (path, name)
            assert await errno_of(fs.getxattr(path, "user.other")) == errno.ENODATA
            assert await errno_of(fs.getxattr(path, "user.xnat.nothing")) == errno.ENODATA
            if path:
                assert (await fs.getxattr(path, "user.xnat.uri")).startswith(b"/data/")
            assert all(name.startswith("user.xnat.") for name in await fs.listxattr(path))

    run_fs(body)


def test_missing_names_are_enoent_and_negative_entries_are_cached_briefly(run_fs):
    async def body(fs):
        for missing in (
            "NOPROJECT",
            "STUDY01/NOSUBJECT",
            f"{SESSION}/SCANS/999",
            f"{SESSION}/SCANS/2/NORESOURCE/x.dcm",
        ):
            assert await errno_of(fs.lookup(missing)) == errno.ENOENT
        negative = await fs.ops.lookup(await fs.inode("STUDY01"), b"NOSUBJECT", None)
        assert negative.st_ino == 0 and 0 < negative.entry_timeout <= fs.ops.settings.negative_ttl
        folder = await dicom_dir(fs)
        some_file = f"{folder}/{(await fs.listdir(folder))[0]}"
        assert await errno_of(fs.listdir(some_file)) == errno.ENOTDIR
        assert await errno_of(fs.ops.open(await fs.inode(folder), os.O_RDONLY, None)) == errno.EISDIR
        assert await errno_of(fs.ops.read(9999, 0, 10)) == errno.EBADF
        assert await errno_of(fs.ops.getattr(123456, None)) == errno.ESTALE
        shared_qc = f"{SHARED}/RESOURCES/QC"
        shared_file = f"{shared_qc}/{(await fs.listdir(shared_qc))[0]}"
        assert await errno_of(fs.ops.open(await fs.inode(shared_file), os.O_RDWR, None)) == errno.EROFS

    run_fs(body)


def test_unsafe_and_colliding_labels_are_shown_safely_and_logged(fake_xnat, run_fs):
    fake_xnat.store.add_subject("STUDY02", "../../escape")
    fake_xnat.store.add_subject("STUDY02", "RESOURCES")

    async def body(fs):
        names = await fs.listdir("STUDY02")
        assert ".._.._escape" in names
        assert "RESOURCES" in names and any(name.startswith("RESOURCES@XNAT_S") for name in names)
        assert await fs.listdir("STUDY02/.._.._escape") == ["RESOURCES"]
        assert all("/" not in name and name not in (".", "..") for name in names)

    log = run_fs(body).log.text()
    assert "'../../escape' is shown as '.._.._escape'" in log
    assert "'RESOURCES' is shown as 'RESOURCES@XNAT_S" in log


def test_statfs_reports_the_cache_disk_and_nothing_free_when_read_only(run_fs):
    async def body(fs):
        stats = await fs.ops.statfs(None)
        assert stats.f_blocks > 0 and stats.f_namemax == 255
        assert stats.f_bavail == 0

    async def writable(fs):
        assert (await fs.ops.statfs(None)).f_bavail > 0

    run_fs(body, read_only=True)
    run_fs(writable)


def test_a_read_only_mount_asks_the_kernel_for_no_flushes(fake_xnat, run_fs):
    """Nothing is written on a read-only mount, so its first close tells the kernel to send no
    more flushes (ENOSYS): every later close then costs no round trip to the daemon. A mount
    that may write needs each flush, to upload at close and report the outcome."""
    names = [f"STUDY01/SUB001/SUB001_MR1/RESOURCES/QC/{name}" for name in ("qc_metrics.csv", "qc_report.pdf")]

    def reading_twice(read_only: bool):
        async def body(fs):
            for name in names * 2:
                fh = await fs.open(name, os.O_RDONLY)
                assert await fs.ops.read(fh, 0, 4)
                await fs.close(fh)
            assert fs.flushes == (1 if read_only else 4)

        return body

    run_fs(reading_twice(True), read_only=True)
    run_fs(reading_twice(False))


def test_looking_up_the_refresh_name_reloads_the_folder_and_queues_drops_of_the_changed_names(fake_xnat, run_fs):
    async def body(fs):
        qc = f"{SESSION}/RESOURCES/QC"
        before = set(await fs.listdir(qc))
        experiment_id = (await fs.getxattr(SESSION, "user.xnat.id")).decode()
        fake_xnat.store.put_file(experiment_id, "QC", "seen-by-a-file-manager.txt", b"uploaded elsewhere")
        assert set(await fs.listdir(qc)) == before
        assert await errno_of(fs.lookup(f"{qc}/{REFRESH_NAME}")) == errno.ENOENT
        assert fs.kernel.invalidated == [("entry", await fs.inode(qc), "seen-by-a-file-manager.txt")]
        assert set(await fs.listdir(qc)) == before | {"seen-by-a-file-manager.txt"}

    run_fs(body, ttl=600)


def test_a_refresh_asked_over_the_control_channel_drops_the_kernels_entries_and_folder(fake_xnat, run_fs):
    async def body(fs):
        project = await fs.inode("STUDY01")
        qc = f"{SESSION}/RESOURCES/QC"
        await fs.listdir(qc)
        await fs.listdir("STUDY01")
        fake_xnat.store.add_subject("STUDY01", "SUB777")
        answer = await refresh(fs.ops, "STUDY01", recursive=False)
        # Its subjects and RESOURCES (BIDS is opened by name, not listed).
        assert answer == {"path": "STUDY01", "entries": 5, "recursive": False}
        assert fs.kernel.invalidated == [("entry", project, "SUB777"), ("inode", project)]
        assert "SUB777" in await fs.listdir("STUDY01")
        fs.kernel.invalidated.clear()
        await refresh(fs.ops, "STUDY01", recursive=True)
        # Every name the kernel was given below the folder is dropped, so it looks each up again.
        assert ("entry", await fs.inode(f"{SESSION}/RESOURCES"), "QC") in fs.kernel.invalidated
        assert ("entry", await fs.inode(qc), "qc_metrics.csv") in fs.kernel.invalidated

    run_fs(body, ttl=600)


def zip_downloads(server) -> list[str]:
    return [target for method, target, _status in server.requests if method == "GET" and "format=zip" in target]


def test_a_series_is_fetched_as_one_zip_unless_turned_off(fake_xnat, tmp_path, run_fs):
    def reading_the_series(zipped: bool):
        async def body(fs):
            fake_xnat.reset_counts()
            folder = await dicom_dir(fs)
            names = sorted(await fs.listdir(folder))
            for name in names:
                assert await fs.read(f"{folder}/{name}")
            if zipped:
                # Named by its path, the folder's zip starts early and brings every file.
                assert len(zip_downloads(fake_xnat)) == 1 and len(downloads(fake_xnat)) < len(names)
            else:
                assert zip_downloads(fake_xnat) == [] and len(downloads(fake_xnat)) == len(names)

        return body

    run_fs(reading_the_series(zipped=False), series_zip_size=0, cache_dir=tmp_path / "unzipped")
    run_fs(reading_the_series(zipped=True), cache_dir=tmp_path / "zipped")


def test_every_file_of_a_series_of_thousands_stays_open_for_its_next_reading(fake_xnat, run_fs):
    """A DTI series has thousands of files and converters read it several times over: each
    file, delivered by the zip or read, stays open for the next open (no disk work, no worker
    thread), where a set of a few hundred let each go before it came round again."""
    store = fake_xnat.store
    experiment_id = store.experiment_id("STUDY01", "SUB003_MR1")
    count = 1200
    with store.batch():
        pk = store.add_scan(experiment_id, "9", type="DWI_dir99", series_description="DWI_dir99", frames=count)
        dicom = store.ensure_resource("scan", str(pk), "DICOM", format="DICOM", content="RAW")
        for number in range(1, count + 1):
            store.store_file(dicom, f"9-{number:04d}.dcm", f"slice {number}\n".encode() * 20)

    async def body(fs):
        folder = "STUDY01/SUB003/SUB003_MR1/SCANS/9-DWI_dir99/DICOM"
        names = sorted(await fs.listdir(folder))
        assert len(names) == count
        for _pass in range(2):
            for name in names:
                assert await fs.read(f"{folder}/{name}") == f"slice {int(name[2:6])}\n".encode() * 20
            # The zip's last files may still be on their way to the cache, served from memory meanwhile.
            with trio.move_on_after(10):
                while len(fs.ops.hot) < count:
                    await trio.sleep(0.02)
            assert len(fs.ops.hot) >= count

    run_fs(body)
    assert len(zip_downloads(fake_xnat)) == 1


def test_a_series_is_written_into_the_cache_once_its_readers_pause(fake_xnat, run_fs, monkeypatch):
    """The zip's files wait in memory, serving their readers, while the series is being read;
    written meanwhile, they took the GIL from those readers."""
    monkeypatch.setattr(series, "QUIET_BEFORE_WRITING", 1.0)

    async def body(fs):
        folder = await dicom_dir(fs)
        names = sorted(await fs.listdir(folder))
        expected = {name: await fs.read(f"{folder}/{name}") for name in names}
        assert len(expected) > 10
        # Long after the zip's end, while its files are still being opened, none was written
        # (the file the first open fetched alone aside).
        with trio.move_on_after(1.2):
            while True:
                for name in names:
                    assert await fs.read(f"{folder}/{name}") == expected[name]
                    await trio.sleep(0.005)
        assert fs.ops.cache.info().entries <= 1
        assert len(zip_downloads(fake_xnat)) == 1
        # Once the reading pauses, every file is written.
        with trio.move_on_after(10):
            while fs.ops.cache.info().entries < len(names):
                await trio.sleep(0.05)
        assert fs.ops.cache.info().entries == len(names)
        for name in names:
            assert await fs.read(f"{folder}/{name}") == expected[name]

    run_fs(body)


def test_a_file_changed_on_the_server_is_not_served_from_its_series_zip(fake_xnat, run_fs, monkeypatch):
    """The zip's files wait in memory for their cache writes; a file that changed on the server
    since is read as it is now, not as the zip had it."""
    # Long enough for the reads below; the mount's end waits for the writes.
    hold_writes(monkeypatch, 8.0)
    experiment = fake_xnat.store.experiment_id("STUDY01", "SUB001_MR1")

    async def body(fs):
        folder = await dicom_dir(fs)
        names = sorted(await fs.listdir(folder))
        contents = {name: await fs.read(f"{folder}/{name}") for name in names}
        # Still held in memory: nothing written yet.
        assert fs.ops.cache.info().entries <= 1
        name = names[-1]
        changed = b"changed on the server" + contents[name]
        fake_xnat.store.put_file(experiment, "DICOM", name, changed, scan_id="2")
        await refresh(fs.ops, "STUDY01", recursive=True)
        assert (await fs.stat(f"{folder}/{name}")).st_size == len(changed)
        assert await fs.read(f"{folder}/{name}") == changed

    run_fs(body, ttl=600)


def test_a_series_being_read_goes_into_the_kernels_page_cache(fake_xnat, run_fs):
    """Each file the zip brings while the series is being read is handed to the kernel's page
    cache, so reading it takes no request; an open then lets the kernel keep those pages, until
    the file changes on the server."""
    experiment = fake_xnat.store.experiment_id("STUDY01", "SUB001_MR1")

    async def body(fs):
        folder = await dicom_dir(fs)
        names = sorted(await fs.listdir(folder))
        by_inode = {await fs.inode(f"{folder}/{name}"): name for name in names}
        contents = {name: await fs.read(f"{folder}/{name}") for name in names}
        stored = fs.kernel.stored
        assert len(stored) >= len(names) // 2
        assert set(stored) <= set(by_inode)
        for inode, data in stored.items():
            assert data == contents[by_inode[inode]]
        inode = max(stored)
        info = await fs.ops.open(inode, os.O_RDONLY, context())
        assert info.keep_cache
        await fs.ops.release(info.fh)

        name = by_inode[inode]
        changed = b"changed on the server" + contents[name]
        fake_xnat.store.put_file(experiment, "DICOM", name, changed, scan_id="2")
        await refresh(fs.ops, "STUDY01", recursive=True)
        info = await fs.ops.open(await fs.inode(f"{folder}/{name}"), os.O_RDONLY, context())
        assert not info.keep_cache
        await fs.ops.release(info.fh)
        assert await fs.read(f"{folder}/{name}") == changed

    run_fs(body, ttl=600)


def test_a_series_nobody_is_reading_stays_out_of_the_kernels_page_cache(fake_xnat, run_fs, monkeypatch):
    """Pages go to the kernel only while a file of the series was opened a moment ago: a
    series nobody reads on goes to the content cache only."""
    monkeypatch.setattr(series, "QUIET_BEFORE_WRITING", 0.0)

    async def body(fs):
        folder = await dicom_dir(fs)
        names = sorted(await fs.listdir(folder))
        for name in names:
            assert await fs.read(f"{folder}/{name}")
        assert len(zip_downloads(fake_xnat)) == 1
        assert fs.kernel.stored == {}

    run_fs(body)


def test_a_series_asked_for_whole_is_written_at_the_zips_end(fake_xnat, run_fs, monkeypatch):
    """The BIDS view and prefetch ask for a whole series and read it from the cache after:
    nobody reads it from memory, so its writes wait for no pause of readers."""
    hold_writes(monkeypatch, 60.0)
    resource_uri = dicom_resource(fake_xnat)

    async def body(fs):
        files = await trio.to_thread.run_sync(fs.ops.connection.list_files, resource_uri)
        assert len(files) > 10
        with trio.fail_after(30):
            await fs.ops.series.fetch_whole(fs.ops.nursery, resource_uri, files)
        assert fs.ops.cache.info().entries == len(files)
        assert len(zip_downloads(fake_xnat)) == 1

    run_fs(body)


def test_the_mounts_end_writes_a_series_held_for_its_readers_at_once(fake_xnat, run_fs, monkeypatch):
    """Unmounted, nobody reads on: the files held in memory for the series' readers go into the
    cache at once, not after the pause of reading the writes otherwise wait for; a zip started
    early for a folder named but never opened stops."""
    hold_writes(monkeypatch, 60.0)
    resource_uri = dicom_resource(fake_xnat)

    async def body(fs):
        folder = await dicom_dir(fs)
        names = sorted(await fs.listdir(folder))
        for name in names:
            assert await fs.read(f"{folder}/{name}")
        flight = fs.ops.series.running(resource_uri)
        assert flight is not None  # held for its readers
        assert fs.ops.cache.info().entries <= 1
        other = next(name for name in await fs.listdir(f"{SESSION}/SCANS") if name.startswith("3-"))
        await fs.lookup(f"{SESSION}/SCANS/{other}/DICOM")
        early = fs.ops.series.running(resource_uri.replace("/scans/2/", "/scans/3/"))
        assert early is not None and not early.claimed and not early.abandoned
        fs.ops.unmounted()
        assert early.abandoned
        with trio.fail_after(20):
            await flight.done.wait()
        assert fs.ops.cache.info().entries == len(names)

    run_fs(body)


def test_a_series_read_on_and_on_still_reaches_the_cache(run_fs, monkeypatch):
    monkeypatch.setattr(series, "QUIET_BEFORE_WRITING", 60.0)
    monkeypatch.setattr(series, "LONGEST_WRITE_WAIT", 0.5)

    async def body(fs):
        folder = await dicom_dir(fs)
        names = sorted(await fs.listdir(folder))
        cached = 0
        with trio.move_on_after(10):
            while cached < len(names):
                for name in names:
                    assert await fs.read(f"{folder}/{name}")
                cached = fs.ops.cache.info().entries
        assert cached == len(names)

    run_fs(body)


def test_a_series_read_while_memory_is_short_is_parked_on_disk_and_served_from_there(fake_xnat, run_fs, monkeypatch):
    """With the bytes held in memory at their bound while the series is still being read, the
    zip's further files wait on disk in one nameless file (no file made per file, which on a slow
    disk held the download back) and are served from there until they are in the cache."""
    largest = max(file.size for path, file in server_files(fake_xnat).items() if path.endswith(".dcm"))
    monkeypatch.setattr(series, "IN_FLIGHT_BYTES", 2 * largest)
    hold_writes(monkeypatch, 30.0)
    resource_uri = dicom_resource(fake_xnat)

    async def body(fs):
        folder = await dicom_dir(fs)
        names = sorted(await fs.listdir(folder))
        contents = {name: await fs.read(f"{folder}/{name}") for name in names}
        flight = fs.ops.series.running(resource_uri)
        assert flight is not None  # its writes wait for the readers' pause
        parked = [key for key, held in flight.checked.items() if isinstance(held, CachedFile)]
        assert len(parked) >= len(names) // 2
        assert fs.ops.cache.info().entries <= 1
        for key in parked:
            name = key.uri.rsplit("/", 1)[1]
            assert hashlib.md5(contents[name]).hexdigest() == key.digest
            assert await fs.read(f"{folder}/{name}") == contents[name]
        # Readers pause: every file goes into the cache, and the parked bytes' file goes.
        monkeypatch.setattr(series, "QUIET_BEFORE_WRITING", 0.0)
        fs.ops.series._in_flight.wake()
        with trio.fail_after(20):
            await flight.done.wait()
        assert fs.ops.cache.info().entries == len(names)
        for name in names:
            assert await fs.read(f"{folder}/{name}") == contents[name]
        with trio.fail_after(5):
            while removed_files_open(fs.ops.cache.directory):
                await trio.sleep(0.02)

    run_fs(body)
    assert len(zip_downloads(fake_xnat)) == 1


def test_a_series_nobody_reads_is_written_as_it_comes_when_memory_is_short(fake_xnat, run_fs, monkeypatch):
    """Parking on disk spares a series' readers; with nobody reading (a prefetch, the BIDS
    view's conversions), writing each file as memory demands finishes the cache soonest."""
    largest = max(file.size for path, file in server_files(fake_xnat).items() if path.endswith(".dcm"))
    monkeypatch.setattr(series, "IN_FLIGHT_BYTES", 2 * largest)
    hold_writes(monkeypatch, 30.0)
    parkings: list[int] = []
    opening = ContentCache.open_nameless
    monkeypatch.setattr(ContentCache, "open_nameless", lambda cache: parkings.append(1) or opening(cache))
    resource_uri = dicom_resource(fake_xnat)

    async def body(fs):
        files = await trio.to_thread.run_sync(fs.ops.connection.list_files, resource_uri)
        with trio.fail_after(20):
            await fs.ops.series.fetch_whole(fs.ops.nursery, resource_uri, files)
        assert fs.ops.cache.info().entries == len(files)

    run_fs(body)
    assert parkings == []


def test_series_zipped_at_once_share_one_bound_on_the_bytes_held_in_memory(fake_xnat, run_fs, monkeypatch):
    """Parsed files wait in memory for the cache writers; with several series read at once the
    bytes waiting, all zips together, stay within the bound one zip has."""
    held = {"now": 0, "peak": 0}
    counting = threading.Lock()

    class CountedBudget(series._ByteBudget):
        def acquire(self, count: int) -> None:
            super().acquire(count)
            with counting:
                held["now"] += count
                held["peak"] = max(held["peak"], held["now"])

        def release(self, count: int) -> None:
            with counting:
                held["now"] -= count
            super().release(count)

    largest = max(file.size for path, file in server_files(fake_xnat).items() if path.endswith(".dcm"))
    bound = 2 * largest
    monkeypatch.setattr(series, "_ByteBudget", CountedBudget)
    monkeypatch.setattr(series, "IN_FLIGHT_BYTES", bound)

    async def body(fs):
        sessions = ["STUDY01/SUB001/SUB001_MR1", "STUDY01/SUB002/SUB002_MR1"]
        folders = [f"{s}/SCANS/{scan}/DICOM" for s in sessions for scan in await fs.listdir(f"{s}/SCANS")]
        read: dict[str, int] = {}

        async def read_series(folder: str) -> None:
            for name in sorted(await fs.listdir(folder)):
                read[f"{folder}/{name}"] = len(await fs.read(f"{folder}/{name}"))

        async with trio.open_nursery() as nursery:
            for folder in folders:
                nursery.start_soon(read_series, folder)
        assert len(folders) == 11 and len(read) > 200
        assert len(zip_downloads(fake_xnat)) == len(folders)

    run_fs(body)
    assert 0 < held["peak"] <= bound
