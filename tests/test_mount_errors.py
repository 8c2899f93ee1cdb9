"""Large files served while they arrive, to several readers at once, on a real mount.

What the handlers answer when the server fails is checked in test_fsapi_errors.py.
"""

from __future__ import annotations

import os
import threading

import pytest

from mountutil import mounted

pytestmark = pytest.mark.mount

SESSION = ("STUDY01", "SUB001", "SUB001_MR1")


def config(tmp_path, **values) -> tuple[str, str]:
    path = tmp_path / "config.toml"
    lines = ["[defaults]"] + [f"{key} = {value!r}" for key, value in values.items()]
    path.write_text("\n".join(lines).replace("'", '"') + "\n")
    return ("--config", str(path))


def test_large_file_is_served_while_it_downloads(fake_xnat, tmp_path):
    payload = os.urandom(3 << 20)
    fake_xnat.store.put_file("XNAT_E00001", "RAW", "big.bin", payload)
    with mounted(fake_xnat.url, tmp_path, args=config(tmp_path, large_file_size="1M")) as mount:
        big = mount.path.joinpath(*SESSION, "RESOURCES", "RAW", "big.bin")
        assert big.stat().st_size == len(payload)
        fake_xnat.reset_counts()
        pieces: dict[int, bytes] = {}

        def read_at(offset: int) -> None:
            with open(big, "rb") as handle:
                handle.seek(offset)
                pieces[offset] = handle.read(1 << 20)

        readers = [threading.Thread(target=read_at, args=(offset,)) for offset in (0, 1 << 20, 2 << 20)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(30)
        assert b"".join(pieces[offset] for offset in sorted(pieces)) == payload
        assert big.read_bytes() == payload
        downloads = [t for m, t, _s in fake_xnat.requests if m == "GET" and "big.bin" in t]
        assert len(downloads) == 1
