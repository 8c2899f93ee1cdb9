"""Times of files written through the mount, once the server lists them (docs/LAYOUT.md, "Times")."""

from __future__ import annotations

from xnatfs.cache.spool import UploadTarget
from xnatfs.client.models import RemoteFile
from xnatfs.fs.local import LocalFile, WrittenTimes
from xnatfs.fs.nodes import FileNode

RESOURCE = "/data/experiments/E1/resources/OUT"
SESSION_TIME = 1_000.0


def sent(relpath: str, size: int, mtime: float, digest: str = "d1") -> LocalFile:
    target = UploadTarget(kind="file", resource_uri=RESOURCE, relpath=relpath, server="http://127.0.0.1")
    local = LocalFile(target=target, container=RESOURCE, relpath=relpath, fd=-1, entry=None, size=size, mtime=mtime)
    local.state, local.sent_md5 = "uploaded", digest
    return local


def listed(relpath: str, size: int, digest: str = "") -> FileNode:
    remote = RemoteFile(path=relpath, size=size, uri=f"{RESOURCE}/files/{relpath}", digest=digest)
    return FileNode(mtime=SESSION_TIME, file=remote)


def test_a_listed_file_shows_when_it_was_written_while_the_server_holds_that_version():
    times = WrittenTimes()
    times.record(sent("a.txt", 5, 2_000.0))
    assert times.shown(RESOURCE, listed("a.txt", 5, "d1")).mtime == 2_000.0
    assert times.shown(RESOURCE, listed("a.txt", 5, "d1")).mtime == 2_000.0
    assert times.shown(RESOURCE, listed("b.txt", 5, "d1")).mtime == SESSION_TIME
    assert times.shown("/data/experiments/E2/resources/OUT", listed("a.txt", 5, "d1")).mtime == SESSION_TIME


def test_another_version_on_the_server_shows_the_sessions_time_for_good():
    times = WrittenTimes()
    times.record(sent("a.txt", 5, 2_000.0))
    times.record(sent("b.txt", 5, 3_000.0, "d3"))
    times.record(sent("c.txt", 5, 4_000.0, "d4"))
    assert times.shown(RESOURCE, listed("a.txt", 5, "d1")).mtime == 2_000.0
    assert times.shown(RESOURCE, listed("a.txt", 5, "d2")).mtime == SESSION_TIME  # same size, other bytes
    assert times.shown(RESOURCE, listed("a.txt", 5, "d1")).mtime == SESSION_TIME
    assert times.shown(RESOURCE, listed("b.txt", 6, "d3")).mtime == SESSION_TIME  # other size
    assert times.shown(RESOURCE, listed("c.txt", 5)).mtime == SESSION_TIME  # listed without its MD5
    assert not times.holds(RESOURCE)


def test_a_file_of_the_same_size_replacing_ours_before_any_listing_gets_no_time_of_ours():
    # Was: the first listing's MD5 was taken for ours. Lent to another version, our time
    # told the kernel that its pages of our bytes were still good: reads gave our bytes.
    times = WrittenTimes()
    times.record(sent("a.txt", 5, 2_000.0, "ours"))
    assert times.shown(RESOURCE, listed("a.txt", 5, "theirs")).mtime == SESSION_TIME
    times.record(sent("b.txt", 5, 2_000.0, ""))  # sent by another process: its MD5 unknown
    assert times.shown(RESOURCE, listed("b.txt", 5, "d1")).mtime == SESSION_TIME


def test_times_are_kept_for_a_bounded_number_of_files_the_oldest_forgotten_first():
    times = WrittenTimes(limit=2)
    for number, name in enumerate(("a", "b", "c")):
        times.record(sent(name, 1, 2_000.0 + number))
    assert [times.shown(RESOURCE, listed(name, 1, "d1")).mtime for name in ("a", "b", "c")] == [
        SESSION_TIME,
        2_001.0,
        2_002.0,
    ]
    times.forget(RESOURCE, "b")
    assert times.shown(RESOURCE, listed("b", 1, "d1")).mtime == SESSION_TIME


def test_times_are_kept_for_the_next_mount_and_a_damaged_record_loses_only_times(tmp_path, caplog):
    path = tmp_path / "times" / "server.json"
    times = WrittenTimes(path=path)
    times.record(sent("a.txt", 5, 2_000.0, "d1"))
    times.save()
    again = WrittenTimes(path=path)
    assert again.shown(RESOURCE, listed("a.txt", 5, "d1")).mtime == 2_000.0
    assert again.shown(RESOURCE, listed("a.txt", 5, "other")).mtime == SESSION_TIME
    path.write_text('{"times": [["/x", "a.txt", "five", 2000.0, "d1"]]}')
    damaged = WrittenTimes(path=path)
    assert not damaged.holds("/x")
    assert "not shown" in caplog.text


def test_times_saved_while_mounted_hold_files_still_shown_from_our_copy(tmp_path):
    # Kept a few seconds after each change, the newest version of a file wins and the bound holds.
    path = tmp_path / "times" / "server.json"
    times = WrittenTimes(limit=2, path=path)
    times.record(sent("a.txt", 5, 2_000.0, "d1"))
    times.record(sent("b.txt", 5, 2_001.0, "d2"))
    rewritten, unhashed = sent("a.txt", 6, 2_002.0, "d3"), sent("c.txt", 1, 2_003.0, "")
    times.save(times.rows([rewritten, unhashed]))
    again = WrittenTimes(limit=2, path=path)
    assert again.shown(RESOURCE, listed("a.txt", 6, "d3")).mtime == 2_002.0
    assert again.shown(RESOURCE, listed("a.txt", 5, "d1")).mtime == SESSION_TIME
    assert again.shown(RESOURCE, listed("b.txt", 5, "d2")).mtime == 2_001.0
    assert again.shown(RESOURCE, listed("c.txt", 1, "")).mtime == SESSION_TIME
    assert times.shown(RESOURCE, listed("a.txt", 5, "d1")).mtime == 2_000.0  # the mount's own are unchanged
