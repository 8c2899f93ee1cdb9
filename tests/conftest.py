"""Shared fixtures: a running fake XNAT, with the small sample study or empty.

The sample is generated once per test session into a template folder and
copied for each test, so every test gets its own fresh, writable server.
Archive files are copied as hard links (fast); the store never writes into
an existing file, it renames a new one into place, so the template stays
intact. Change server data through ``server.store``, not by writing files.
"""

from __future__ import annotations

import os
import shutil

import pytest
import requests

from fakeutil import FakeServerProcess
from xnatfs.fake import FakeXnat


@pytest.fixture(scope="session")
def fake_xnat_template(tmp_path_factory):
    """A data folder holding the small sample study; never served directly."""
    template = tmp_path_factory.mktemp("fake-xnat-template")
    FakeXnat(template, sample="small").close()
    return template


def _copy_sample(template, data) -> None:
    shutil.copytree(template / "archive", data / "archive", copy_function=_link_or_copy)
    for name in os.listdir(template):
        if name != "archive" and (template / name).is_file():
            shutil.copy2(template / name, data / name)


@pytest.fixture
def fake_xnat(fake_xnat_template, tmp_path):
    """A started fake XNAT with a fresh copy of the small sample study."""
    data = tmp_path / "fake-xnat"
    _copy_sample(fake_xnat_template, data)
    server = FakeXnat(data).start()
    yield server
    server.close()


@pytest.fixture
def fake_xnat_process(fake_xnat_template, tmp_path):
    """Like ``fake_xnat``, in a process of its own that the test may stop and continue."""
    data = tmp_path / "fake-xnat"
    _copy_sample(fake_xnat_template, data)
    server = FakeServerProcess(data, tmp_path / "fake-xnat.log")
    yield server
    server.close()


@pytest.fixture
def fake_xnat_empty(tmp_path):
    """A started fake XNAT with no data at all."""
    server = FakeXnat(tmp_path / "fake-xnat").start()
    yield server
    server.close()


@pytest.fixture
def http(fake_xnat):
    """A ``requests`` session that logs in to ``fake_xnat`` with HTTP Basic on every request."""
    session = requests.Session()
    session.auth = (fake_xnat.username, fake_xnat.password)
    yield session
    session.close()


def _link_or_copy(source, target):
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
    return target
