"""Where the client's credentials come from, and that passwords stay hidden."""

import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from xnatfs.client.credentials import (
    AliasToken,
    Credentials,
    load_alias_token,
    resolve_credentials,
    store_alias_token,
)

URL = "https://xnat.example.org:8443/xnat"


@pytest.fixture
def home(tmp_path):
    """An environment with an empty home: no netrc, no tokens."""
    return {"HOME": str(tmp_path)}


def write_netrc(path, text):
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_explicit_arguments_win_over_everything(home, tmp_path):
    env = dict(home, XNAT_USER="envuser", XNAT_PASS="envpass")
    write_netrc(tmp_path / ".netrc", "machine xnat.example.org login netrcuser password netrcpass\n")
    found = resolve_credentials(URL, "me", "secret", environ=env)
    assert tuple(found) == ("me", "secret")
    assert found.source == "arguments"


def test_environment_comes_before_netrc(home, tmp_path):
    env = dict(home, XNAT_USER="envuser", XNAT_PASS="envpass")
    write_netrc(tmp_path / ".netrc", "machine xnat.example.org login netrcuser password netrcpass\n")
    assert tuple(resolve_credentials(URL, environ=env)) == ("envuser", "envpass")


def test_netrc_named_by_NETRC_is_read_for_the_host(home, tmp_path):
    netrc_file = write_netrc(
        tmp_path / "other-netrc",
        "machine elsewhere.org login x password y\nmachine xnat.example.org login netrcuser password netrcpass\n",
    )
    env = dict(home, NETRC=str(netrc_file))
    found = resolve_credentials(URL, environ=env)
    assert tuple(found) == ("netrcuser", "netrcpass")
    assert found.source == str(netrc_file)


def test_netrc_entry_with_port_is_preferred(home, tmp_path):
    write_netrc(
        tmp_path / ".netrc",
        "machine xnat.example.org login plain password p1\nmachine xnat.example.org:8443 login ported password p2\n",
    )
    assert tuple(resolve_credentials(URL, environ=home)) == ("ported", "p2")


def test_username_without_password_narrows_netrc_to_that_login(home, tmp_path):
    write_netrc(tmp_path / ".netrc", "machine xnat.example.org login someone password pw\n")
    assert resolve_credentials(URL, "me", environ=home) is None
    assert tuple(resolve_credentials(URL, "someone", environ=home)) == ("someone", "pw")


def test_XNAT_USER_without_password_uses_netrc_for_that_user(home, tmp_path):
    write_netrc(tmp_path / ".netrc", "machine xnat.example.org login envuser password frometc\n")
    env = dict(home, XNAT_USER="envuser")
    assert tuple(resolve_credentials(URL, environ=env)) == ("envuser", "frometc")


def test_alias_token_is_the_last_resort(home, tmp_path):
    token = AliasToken("0123-alias", "s3cret", expires=None)
    path = store_alias_token(URL, token, environ=home)
    assert path == tmp_path / ".config" / "xnatfs" / "tokens.json"
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    found = resolve_credentials(URL, environ=home)
    assert tuple(found) == ("0123-alias", "s3cret")
    assert found.source == "alias token"
    # A netrc entry takes precedence over the token.
    write_netrc(tmp_path / ".netrc", "machine xnat.example.org login netrcuser password netrcpass\n")
    assert resolve_credentials(URL, environ=home).username == "netrcuser"


def test_expired_alias_token_is_ignored(home):
    store_alias_token(URL, AliasToken("a", "s", expires=1.0), environ=home)
    assert load_alias_token(URL, environ=home) is None
    assert resolve_credentials(URL, environ=home) is None


def test_tokens_are_kept_per_server(home):
    store_alias_token(URL, AliasToken("a1", "s1"), environ=home)
    store_alias_token("https://other.example.org", AliasToken("a2", "s2"), environ=home)
    assert load_alias_token(URL, environ=home).alias == "a1"
    assert load_alias_token("https://other.example.org/", environ=home).alias == "a2"


def test_tokens_stored_at_the_same_time_leave_a_whole_file(home, tmp_path):
    def store_many(worker: int) -> None:
        for round_number in range(30):
            store_alias_token(f"https://xnat{worker}.example.org", AliasToken(f"a{round_number}", "s"), environ=home)

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(store_many, range(6)))
    folder = tmp_path / ".config" / "xnatfs"
    assert os.listdir(folder) == ["tokens.json"]
    assert json.loads((folder / "tokens.json").read_text())  # whole JSON, no temp files left


def test_nothing_found_means_guest(home):
    assert resolve_credentials(URL, environ=home) is None


def test_unreadable_netrc_is_skipped_without_quoting_it(home, tmp_path, caplog):
    write_netrc(tmp_path / ".netrc", "machine xnat.example.org login u password topsecret extra-garbage\n")
    assert resolve_credentials(URL, environ=home) is None
    assert "topsecret" not in caplog.text


def test_passwords_never_show_in_repr():
    credentials = Credentials("admin", "hunter2")
    token = AliasToken("alias", "tokensecret")
    assert "hunter2" not in repr(credentials) and "hunter2" not in str(credentials)
    assert "tokensecret" not in repr(token)
    user, password = credentials  # unpacks like datman's tuple
    assert (user, password) == ("admin", "hunter2")
    assert credentials == ("admin", "hunter2")
