"""The client contract: the calls the file system makes, and the client that answers them."""

from __future__ import annotations

import inspect

from xnatfs.client.connection import XnatConnection
from xnatfs.client.contract import ArchiveClient


def contract_calls() -> list[str]:
    return [name for name, value in vars(ArchiveClient).items() if callable(value) and not name.startswith("_")]


def parameters(function) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def test_the_connection_answers_every_call_of_the_contract_with_its_parameters():
    calls = contract_calls()
    assert len(calls) >= 20
    for name in calls:
        assert parameters(getattr(XnatConnection, name)) == parameters(getattr(ArchiveClient, name)), name


def test_a_connection_is_an_archive_client(fake_xnat):
    with XnatConnection(fake_xnat.url, fake_xnat.username, fake_xnat.password) as connection:
        assert isinstance(connection, ArchiveClient)
    assert not isinstance(object(), ArchiveClient)
