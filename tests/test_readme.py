"""The README's Python examples use names that exist (every import line of every python block runs)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_imports_resolve():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    lines = [ln.split("#")[0].strip() for b in blocks for ln in b.splitlines()
             if ln.startswith(("import massmech", "from massmech"))]
    assert lines, "no python examples found"
    for line in lines:
        exec(line, {})  # noqa: S102 - our own README
