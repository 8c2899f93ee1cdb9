"""The mount needs none of the fake server's dependencies; the demo says how to get them."""

import subprocess
import sys

# Makes `import pydicom` and `import numpy` fail, as on a machine without the `fake` extra.
WITHOUT_FAKE_EXTRA = "import sys; sys.modules['pydicom'] = None; sys.modules['numpy'] = None; "


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_FAKE_EXTRA + code], capture_output=True, text=True, timeout=60)


def test_the_mount_imports_without_the_fake_extra():
    result = _python("import xnatfs.cli, xnatfs.fs.mount, xnatfs.prefetch, xnatfs.client; print('ok')")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_demo_without_the_fake_extra_names_it_in_one_line(tmp_path):
    result = _python(f"from xnatfs.cli import main; sys.exit(main(['demo', {str(tmp_path / 'm')!r}]))")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "pip install 'xnatfs[fake]'" in lines[0]


def test_fake_server_without_the_fake_extra_names_it_in_one_line():
    result = _python("from xnatfs.cli import main; sys.exit(main(['fake-server', '--help']))")
    assert result.returncode == 1
    assert "xnatfs[fake]" in result.stderr and "Traceback" not in result.stderr
