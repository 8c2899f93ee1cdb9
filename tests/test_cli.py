"""The xnatfs command: one-line errors before anything is forked, cache commands, config."""

from __future__ import annotations

from pathlib import Path

import pytest

from xnatfs.cache.content import CacheKey, ContentCache
from xnatfs.cli import main
from xnatfs.fs.settings import load_config, parse_size

pytestmark = pytest.mark.usefixtures("isolated_home")


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("xnatfs: ")
    assert "\n" not in err
    return err


def test_not_a_url(tmp_path, capsys):
    assert main(["mount", "xnat.example.org", str(tmp_path)]) != 0
    assert "not a server address" in one_line_error(capsys)


def test_missing_mountpoint(tmp_path, capsys):
    assert main(["mount", "http://127.0.0.1:9", str(tmp_path / "nowhere")]) != 0
    assert "does not exist" in one_line_error(capsys)


def test_mountpoint_not_empty(tmp_path, capsys):
    (tmp_path / "something").write_text("x")
    assert main(["mount", "http://127.0.0.1:9", str(tmp_path)]) != 0
    assert "not empty" in one_line_error(capsys)


def test_mountpoint_is_a_file(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["mount", "http://127.0.0.1:9", str(target)]) != 0
    assert "not a directory" in one_line_error(capsys)


def test_cache_folder_inside_the_mountpoint(tmp_path, capsys):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    assert main(["mount", "http://127.0.0.1:9", str(mountpoint), "--cache-dir", str(mountpoint / "cache")]) != 0
    assert "cannot be inside the mountpoint" in one_line_error(capsys)


def test_unreachable_server(tmp_path, capsys):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    assert (
        main(
            [
                "mount",
                "http://127.0.0.1:9",
                str(mountpoint),
                "--user",
                "u",
                "--password-file",
                str(_password_file(tmp_path, "p")),
            ]
        )
        != 0
    )
    assert "cannot use http://127.0.0.1:9" in one_line_error(capsys)


def test_wrong_password_is_refused_before_forking(fake_xnat, tmp_path, capsys):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    assert (
        main(
            [
                "mount",
                fake_xnat.url,
                str(mountpoint),
                "--user",
                "admin",
                "--password-file",
                str(_password_file(tmp_path, "wrong")),
            ]
        )
        != 0
    )
    err = one_line_error(capsys)
    assert "refused user admin" in err
    assert "wrong" not in err


def test_unmount_of_something_not_mounted(tmp_path, capsys):
    assert main(["unmount", str(tmp_path)]) != 0
    assert "not mounted" in one_line_error(capsys)


def test_cache_info_and_clear(tmp_path, capsys):
    cache_dir = tmp_path / "cache"
    cache = ContentCache(cache_dir, 1 << 20)
    cache.insert(CacheKey("http://x/data/a", 5), _source(tmp_path, b"hello"))
    cache.close()
    assert main(["cache", "info", "--cache-dir", str(cache_dir)]) == 0
    out = capsys.readouterr().out
    assert "files:     1" in out
    assert main(["cache", "clear", "--cache-dir", str(cache_dir)]) == 0
    assert "removed 1 files" in capsys.readouterr().out
    assert main(["cache", "info", "--cache-dir", str(cache_dir)]) == 0
    assert "files:     0" in capsys.readouterr().out


def test_sizes():
    assert parse_size("10G") == 10 << 30
    assert parse_size("512M") == 512 << 20
    assert parse_size("64K") == 64 << 10
    assert parse_size("1.5GiB") == 3 << 29
    assert parse_size("4096") == 4096
    with pytest.raises(ValueError):
        parse_size("lots")


def test_config_file_defaults_and_per_server(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(
        '[defaults]\nttl = 30\ncache-size = "2G"\n\n'
        '[servers."https://xnat.example.org"]\nuser = "alice"\nread_only = true\n'
        'options = "allow_other"\n'
    )
    settings = load_config(config, "https://xnat.example.org")
    assert settings.ttl == 30
    assert settings.cache_size == 2 << 30
    assert settings.user == "alice"
    assert settings.read_only
    assert settings.fuse_options == ("allow_other",)
    other = load_config(config, "https://other.example.org")
    assert other.user is None and not other.read_only and other.ttl == 30


def test_config_file_with_unknown_setting_is_a_one_line_error(tmp_path, capsys):
    config = tmp_path / "config.toml"
    config.write_text("[defaults]\ncolour = 'blue'\n")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    assert main(["mount", "http://127.0.0.1:9", str(mountpoint), "--config", str(config)]) != 0
    assert "unknown setting 'colour'" in one_line_error(capsys)


def _password_file(folder: Path, password: str) -> Path:
    path = folder / "password"
    path.write_text(password + "\n")
    return path


def _source(folder: Path, data: bytes) -> Path:
    path = folder / "source"
    path.write_bytes(data)
    return path


def test_bad_series_zip_size_is_a_one_line_error(tmp_path, capsys):
    assert main(["mount", "http://127.0.0.1:9", str(tmp_path), "--series-zip-size", "plenty"]) != 0
    assert "plenty" in one_line_error(capsys)
