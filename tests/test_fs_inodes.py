"""Inode numbers are stable per path and the table shrinks with the kernel's forgets."""

import pyfuse3

from xnatfs.fs.inodes import InodeTable
from xnatfs.fs.nodes import RootDir


def test_numbers_are_stable_and_forgotten_entries_leave():
    root = RootDir(mtime=0.0)
    table = InodeTable(root)
    path = ("STUDY01", "SUB001")
    number = table.remember(path, root)
    assert number > pyfuse3.ROOT_INODE
    assert table.remember(path, root) == number
    assert len(table) == 2
    assert not table.forget(number, 1)
    assert table.forget(number, 1)
    assert len(table) == 1
    assert table.get(number) is None
    assert table.remember(path, root) == number


def test_many_paths_get_distinct_numbers_and_the_root_stays():
    root = RootDir(mtime=0.0)
    table = InodeTable(root)
    numbers = {table.remember(("P", f"S{i}"), root) for i in range(5000)}
    assert len(numbers) == 5000
    assert pyfuse3.ROOT_INODE not in numbers
    assert not table.forget(pyfuse3.ROOT_INODE, 10)
    for i in range(5000):
        table.forget(table.number_of(("P", f"S{i}")), 1)
    assert len(table) == 1


def test_move_rekeys_a_subtree():
    root = RootDir(mtime=0.0)
    table = InodeTable(root)
    parent = table.remember(("P", "OLD"), root)
    child = table.remember(("P", "OLD", "E1"), root)
    table.move(("P", "OLD"), ("P", "NEW"))
    assert table.number_of(("P", "NEW")) == parent
    assert table.number_of(("P", "NEW", "E1")) == child
    assert table.number_of(("P", "OLD")) is None
    assert table.get(child).path == ("P", "NEW", "E1")
