"""A fake XNAT server for tests and the demo.

``FakeXnat(data_dir, ...)`` serves an XNAT look-alike over real HTTP on
127.0.0.1, keeping its data in ``data_dir`` (SQLite plus an archive folder).
See :mod:`xnatfs.fake.server` for the switches and :mod:`xnatfs.fake.sample`
for the sample studies.
"""

from .server import FakeXnat
from .store import Store, StoreError

__all__ = ["FakeXnat", "Store", "StoreError"]
