"""docs/SEMANTICS.md is checked against the code: its errno table (§3) is what the mount answers."""

import errno
import re
from pathlib import Path

import pytest

from xnatfs.errors import XnatError
from xnatfs.fs.errno import errno_for

SEMANTICS = Path(__file__).resolve().parent.parent / "docs" / "SEMANTICS.md"


def _status_rows() -> dict[int, str]:
    """HTTP status → the errno name §3 gives for it (rows naming statuses only)."""
    section = SEMANTICS.read_text().split("## 3. Errors", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not re.match(r"^[A-Z]+", cells[1]):
            continue
        answer = cells[1].split()[0]
        for status in re.findall(r"\b([1-5]\d\d)\b", cells[0]):
            rows[int(status)] = answer
        if "5xx" in cells[0]:
            for status in (500, 502, 503, 504):
                rows[status] = answer
    return rows


ROWS = _status_rows()


def test_the_table_names_every_status_the_mount_maps():
    assert {400, 401, 403, 404, 405, 409, 417, 422, 500, 503} <= set(ROWS)


@pytest.mark.parametrize("status", sorted(ROWS))
def test_each_documented_status_gives_the_documented_errno(status):
    expected = getattr(errno, ROWS[status])
    assert errno_for(XnatError("refused", status=status)) == expected, ROWS[status]
