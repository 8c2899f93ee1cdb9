"""``xnatfs prefetch`` on a plain local tree: walking, counting, errors, exit status."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading

import pytest

from xnatfs.prefetch import (
    FileToRead,
    add_arguments,
    collect_files,
    main,
    read_whole_file,
    run_prefetch,
)


def make_tree(root):
    """A small resource-like tree: two series and a report, plus things prefetch must skip."""
    sizes = {}
    for series, count in (("SCANS/2-T1w/DICOM", 5), ("SCANS/3-T2w/DICOM", 3)):
        folder = root / series
        folder.mkdir(parents=True)
        for index in range(count):
            path = folder / f"{index:04d}.dcm"
            path.write_bytes(os.urandom(1000 + index * 300))
            sizes[str(path)] = path.stat().st_size
    report = root / "RESOURCES" / "QC" / "report.pdf"
    report.parent.mkdir(parents=True)
    report.write_bytes(b"%PDF-1.4\n" * 400_000)
    sizes[str(report)] = report.stat().st_size
    (root / "RESOURCES" / "empty").write_bytes(b"")
    sizes[str(root / "RESOURCES" / "empty")] = 0
    (root / "link-to-report").symlink_to(report)
    os.mkfifo(root / "RESOURCES" / "pipe")
    return sizes


def parse(argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_collect_files_lists_every_regular_file_once_in_path_order(tmp_path):
    sizes = make_tree(tmp_path)
    errors = []
    files = collect_files(
        [str(tmp_path), str(tmp_path / "SCANS"), str(tmp_path / "RESOURCES" / "QC" / "report.pdf")], errors
    )
    assert errors == []
    assert [item.path for item in files] == sorted(sizes)
    assert {item.path: item.size for item in files} == sizes


def test_prefetch_reads_every_byte_and_reports_totals(tmp_path):
    sizes = make_tree(tmp_path)
    report = run_prefetch([str(tmp_path)], jobs=3, progress=False)
    assert report.ok
    assert report.files == len(sizes)
    assert report.bytes == sum(sizes.values())
    assert report.seconds > 0
    assert report.rate == pytest.approx(report.bytes / report.seconds)
    assert f"prefetched {len(sizes)} files" in report.summary()
    assert report.summary().endswith("0 errors")


def test_missing_paths_are_errors_and_the_rest_is_still_read(tmp_path):
    sizes = make_tree(tmp_path)
    missing = str(tmp_path / "no-such-session")
    report = run_prefetch([missing, str(tmp_path / "SCANS")], progress=False)
    assert not report.ok
    assert [error.path for error in report.errors] == [missing]
    assert report.files == sum(1 for path in sizes if "/SCANS/" in path)


class CountingBar:
    def __init__(self):
        self.bytes = 0

    def add_bytes(self, count):
        self.bytes += count


def test_a_file_shorter_than_its_listed_size_is_an_error(tmp_path):
    path = tmp_path / "truncated.dcm"
    path.write_bytes(b"x" * 100)
    bar = CountingBar()
    with pytest.raises(OSError, match="read 100 bytes, but its size is 150"):
        read_whole_file(FileToRead(str(path), 150), bar, threading.Event())
    assert bar.bytes == 100


def test_main_prints_a_summary_and_exits_zero(tmp_path, capsys):
    sizes = make_tree(tmp_path)
    assert main(parse(["--quiet", "-j", "2", str(tmp_path)])) == 0
    out, _err = capsys.readouterr()
    assert out.strip().startswith(f"prefetched {len(sizes)} files")
    assert "0 errors" in out


def test_main_names_failed_paths_and_exits_non_zero(tmp_path, capsys):
    make_tree(tmp_path)
    missing = tmp_path / "gone"
    assert main(parse(["--quiet", str(tmp_path), str(missing)])) == 1
    out, err = capsys.readouterr()
    assert f"{missing}: No such file or directory" in err
    assert out.strip().endswith("1 error")


def test_main_refuses_zero_jobs(tmp_path, capsys):
    assert main(parse(["--jobs", "0", str(tmp_path)])) == 2
    assert "--jobs" in capsys.readouterr().err


def test_the_xnatfs_command_runs_prefetch(tmp_path):
    sizes = make_tree(tmp_path / "tree")
    done = subprocess.run(
        [sys.executable, "-m", "xnatfs", "prefetch", "--quiet", str(tmp_path / "tree")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"prefetched {len(sizes)} files")
    assert "not inside an xnatfs mount" in done.stderr

    missing = subprocess.run(
        [sys.executable, "-m", "xnatfs", "prefetch", "--quiet", str(tmp_path / "gone")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1
    assert "No such file or directory" in missing.stderr
