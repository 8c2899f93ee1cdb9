"""The example in docs/PYTHON_API.md runs as written."""

import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "PYTHON_API.md"


def test_first_example_runs(capsys):
    example = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)[0]
    exec(compile(example, str(DOC), "exec"), {"__name__": "python_api_example"})
    printed = capsys.readouterr().out
    assert "['SUB001', 'SUB002', 'SUB003']" in printed
    assert "2 T1w_MPRAGE" in printed
    assert "missing: not found" in printed
