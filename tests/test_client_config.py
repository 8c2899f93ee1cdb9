"""The client's TOML configuration and datman's get_port_str / get_connection."""

import pytest

from xnatfs.client import ClientConfig, get_connection, get_port_str
from xnatfs.client.config import server_url
from xnatfs.errors import XnatError

CONFIG = """
[xnat]
server = "xnat.example.org"
port = 8443
timeout = 30
verify = false

[naming]
T1 = { SeriesDescription = ["T1w", "MPRAGE"] }

[sites.CMH.xnat]
server = "https://cmh.example.org"

[sites.CMH.naming]
T1 = { SeriesDescription = "BRAVO" }
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    return path


def test_keys_answer_to_datman_names_and_ours(config_file):
    config = ClientConfig.load(config_file)
    assert config.get_key("XNATSERVER") == "xnat.example.org"
    assert config.get_key("server") == "xnat.example.org"
    assert config.get_key("XNATPORT") == 8443
    assert config.get_key("XNATSERVER", site="CMH") == "https://cmh.example.org"
    assert config.get_key("XNATPORT", site="CMH") == 8443  # falls back to [xnat]
    with pytest.raises(KeyError):
        config.get_key("XNAT_CREDENTIALS")


def test_naming_per_site(config_file):
    config = ClientConfig.load(config_file)
    assert config.get_tags()["T1"]["SeriesDescription"] == ["T1w", "MPRAGE"]
    assert config.get_tags(site="CMH")["T1"]["SeriesDescription"] == "BRAVO"
    assert config.get_tags(site="OTHER") == config.get_tags()


def test_connection_options(config_file):
    assert ClientConfig.load(config_file).connection_options() == {"verify": False, "timeout": 30}


def test_default_file_may_be_absent_but_an_explicit_one_not(tmp_path, monkeypatch):
    monkeypatch.setenv("XNATFS_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(KeyError):
        ClientConfig.load().get_key("XNATSERVER")
    with pytest.raises(FileNotFoundError):
        ClientConfig.load(tmp_path / "missing.toml")


def test_broken_toml_is_an_xnat_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[xnat\nserver = ")
    with pytest.raises(XnatError):
        ClientConfig.load(path)


def test_port_strings():
    assert get_port_str(port=8443) == ":8443"
    assert get_port_str(port=":80") == ":80"
    assert get_port_str({"XNATPORT": 443}) == ":443"
    with pytest.raises(KeyError):
        get_port_str({"XNATSERVER": "x"})


def test_port_string_without_config_or_port_is_a_key_error_as_datman_documents():
    with pytest.raises(KeyError):
        get_port_str()
    with pytest.raises(KeyError):
        get_port_str(config=None, port=None)


def test_server_url_adds_scheme_and_port_in_the_right_place():
    assert server_url("xnat.example.org") == "https://xnat.example.org"
    assert server_url("https://host/xnat/", ":8443") == "https://host:8443/xnat"
    assert server_url("http://host:8080", ":9") == "http://host:8080"


def test_get_connection_without_any_server_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("XNATFS_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(XnatError, match="no XNAT server"):
        get_connection()
