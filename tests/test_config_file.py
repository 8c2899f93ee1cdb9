"""One module reads the configuration file; a broken file is one line naming the file and the line."""

import pytest

from xnatfs.cli import main
from xnatfs.client.config import ClientConfig
from xnatfs.config import ConfigError, mount_tables, read_config
from xnatfs.fs.settings import load_config

BROKEN = "[defaults]\nttl = 30\ncache_size = \n"


def test_a_syntax_error_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(BROKEN)
    with pytest.raises(ConfigError) as caught:
        read_config(path)
    assert str(caught.value).startswith(f"config file {path}, line 3: ")
    assert "\n" not in str(caught.value)


def test_mount_and_client_read_the_same_file_through_one_reader(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(BROKEN)
    with pytest.raises(ConfigError):
        load_config(path, "https://xnat.example.org")
    with pytest.raises(ConfigError):
        ClientConfig.load(path)


def test_the_mount_command_shows_a_broken_file_in_one_line(tmp_path, capsys):
    path = tmp_path / "config.toml"
    path.write_text(BROKEN)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    assert main(["mount", "http://127.0.0.1:9", str(mountpoint), "--config", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"xnatfs: config file {path}, line 3: ")
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_a_bad_value_names_the_file_and_its_table(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[servers."https://xnat.example.org"]\ncache_size = "lots"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, "https://xnat.example.org")
    assert str(path) in str(caught.value) and "[servers.'https://xnat.example.org']" in str(caught.value)


def test_tables_for_a_server_come_weakest_first(tmp_path):
    document = {"defaults": {"ttl": 1}, "servers": {"https://x.org": {"ttl": 2}}, "xnat": {"server": "y"}}
    assert mount_tables(document, "https://x.org/") == [
        ("[defaults]", {"ttl": 1}),
        ("[servers.'https://x.org/']", {"ttl": 2}),
    ]
    assert mount_tables(document, "https://other.org") == [("[defaults]", {"ttl": 1})]


def test_the_bids_view_is_set_from_the_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[defaults]\nbids = false\n[servers."https://xnat.example.org"]\nbids_config = "~/dcm2bids.json"\n')
    settings = load_config(path, "https://xnat.example.org")
    assert settings.bids is False
    assert settings.bids_config is not None and settings.bids_config.name == "dcm2bids.json"
    assert not str(settings.bids_config).startswith("~")
    assert load_config(tmp_path / "absent.toml", "https://xnat.example.org").bids is True


@pytest.mark.parametrize(
    ("line", "said"),
    [
        ("workers = 0", "workers must be a whole number, 1 or more, not 0"),
        ('read_only = "no"', "read_only must be true or false, not 'no'"),
        ("timeout = -1", "timeout must be a number of seconds above 0, not -1.0"),
        ("ttl = nan", "ttl must be a number of seconds 0 or more, not nan"),
        ("download_streams = 0", "download_streams must be a whole number, 1 or more, not 0"),
        ('log_level = "loud"', "log_level must be one of DEBUG, INFO, WARNING, ERROR, not 'LOUD'"),
        ("cache_size = 0", "cache_size must be a size above 0 (e.g. 10G, 512M), not 0"),
        ("ttl = [1]", "ttl: float() argument must be"),
    ],
)
def test_a_value_out_of_range_in_the_file_is_refused_before_mounting(tmp_path, capsys, line, said):
    """A value that would not fail at once (no worker: every request waits for ever; the text
    "no" read as true) is refused with the file and the setting named."""
    path = tmp_path / "config.toml"
    path.write_text(f"[defaults]\n{line}\n")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    assert main(["mount", "http://127.0.0.1:9", str(mountpoint), "--config", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"xnatfs: config file {path} [defaults]: {said}"), err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("option", "said"),
    [
        (["--ttl", "-1"], "ttl must be a number of seconds 0 or more, not -1.0"),
        (["--ttl", "nan"], "ttl must be a number of seconds 0 or more, not nan"),
        (["--timeout", "0"], "timeout must be a number of seconds above 0, not 0.0"),
        (["--timeout", "inf"], "timeout must be a number of seconds above 0, not inf"),
        (["--cache-size", "0"], "cache_size must be a size above 0 (e.g. 10G, 512M), not 0"),
    ],
)
def test_a_value_out_of_range_on_the_command_line_is_one_line(tmp_path, capsys, option, said):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    empty = tmp_path / "none.toml"
    assert main(["mount", "http://127.0.0.1:9", str(mountpoint), "--config", str(empty), *option]) == 1
    assert capsys.readouterr().err.strip() == f"xnatfs: {said}"
