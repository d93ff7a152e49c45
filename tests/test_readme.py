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


def test_no_false_claim_about_the_papers_code():
    """Issue 14, finding 7: the paper's code guards its disruption with `if q_len != 1` (decode steps
    untouched), so it has no per-step-mean bug; the model is SmolLM2-135M-Instruct."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    texts = [(root / "README.md").read_text(), (root / "src/massmech/causal/intervention.py").read_text()]
    for text in texts:
        assert "bug of the paper" not in text
    assert "q_len != 1" in texts[0] and "SmolLM2-135M-Instruct" in texts[0]
