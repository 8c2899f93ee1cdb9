"""Shared fixtures: a running fake XNAT, with the small sample study or empty.

The sample is generated once per test session into a template folder and
copied for each test, so every test gets its own fresh, writable server.
Archive files are copied as hard links (fast); the store never writes into
an existing file, it renames a new one into place, so the template stays
intact. Change server data through ``server.store``, not by writing files.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass

import pytest
import requests

import fsapi
from fakeutil import FakeServerProcess
from mountutil import fuse_unavailable
from xnatfs.client.connection import XnatConnection
from xnatfs.fake import FakeXnat
from xnatfs.fs.mount import build_operations
from xnatfs.fs.settings import MountSettings


@pytest.fixture(scope="session", autouse=True)
def compiled_once_for_every_process(tmp_path_factory):
    """The tests start hundreds of xnatfs processes (mounts, commands, fake servers);
    with PYTHONDONTWRITEBYTECODE set, as it may be, each compiled the whole package
    again, a third of its start-up. Their bytecode is kept here instead, outside the
    source tree, for the length of the session."""
    saved = {name: os.environ.get(name) for name in ("PYTHONPYCACHEPREFIX", "PYTHONDONTWRITEBYTECODE")}
    os.environ["PYTHONPYCACHEPREFIX"] = str(tmp_path_factory.mktemp("bytecode"))
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def pytest_collection_modifyitems(config, items):
    """Tests marked ``mount`` are skipped, saying why, where no FUSE file system can be mounted."""
    reason = fuse_unavailable()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"mounts a real file system, and {reason}")
    for item in items:
        if "mount" in item.keywords:
            item.add_marker(skip)


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


@dataclass
class FsRun:
    """What a kernel-less run left: the calls the kernel was asked for, and the log."""

    kernel: fsapi.RecordingKernel
    log: fsapi.LogWatch


@pytest.fixture
def run_fs(request, tmp_path):
    """Runs ``async def body(fs)`` against the operations of a mount of ``fake_xnat`` (or ``server``),
    without a kernel.

    ``run_fs(body, expected_errors=[regex, ...], **settings)``: settings are
    :class:`MountSettings` fields (``ttl``, ``read_only``, ``allow_delete``,
    ...; ``retries`` is 0 unless given, so injected faults show at once).
    Fails the test if the file system logged a traceback or an ERROR that no
    expected pattern matches. Returns the kernel's record and the log.
    """

    def run(body, *, expected_errors=(), server=None, **options) -> FsRun:
        server = server or request.getfixturevalue("fake_xnat")
        options.setdefault("retries", 0)
        options.setdefault("cache_dir", tmp_path / "fs-cache")
        settings = MountSettings(url=server.url, mountpoint=tmp_path / "not-mounted", **options)
        watch = fsapi.LogWatch(expected_errors)
        package = logging.getLogger("xnatfs")
        level = package.level
        package.addHandler(watch)
        package.setLevel(logging.DEBUG)
        try:
            with XnatConnection(
                server.url, server.username, server.password, timeout=settings.timeout, retries=settings.retries
            ) as connection:
                ops = build_operations(settings, connection)
                try:
                    kernel = fsapi.run_fs(ops, body)
                finally:
                    for held in ops.hot.clear():
                        held.close()
                    ops.cache.close()
        finally:
            package.removeHandler(watch)
            package.setLevel(level)
        unexpected = watch.unexpected()
        assert not unexpected, "the file system logged:\n" + "\n".join(unexpected)
        return FsRun(kernel, watch)

    return run


@pytest.fixture
def isolated_home(tmp_path, monkeypatch):
    """A home folder of the test's own: config, state, cache and netrc look-ups stay in it,
    and no XNAT credentials come from the environment."""
    home = tmp_path / "home"
    home.mkdir()
    for name, sub in (
        ("HOME", ""),
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_STATE_HOME", "state"),
        ("XDG_CACHE_HOME", "cache"),
    ):
        monkeypatch.setenv(name, str(home / sub))
    monkeypatch.setenv("NETRC", str(home / "no-netrc"))
    monkeypatch.delenv("XNAT_USER", raising=False)
    monkeypatch.delenv("XNAT_PASS", raising=False)
    return home
