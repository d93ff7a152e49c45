"""The documentation: the site builds with --strict, and every Python example on its pages runs.

A broken reference (a renamed function in an API page, a missing page in the nav, a snippet file
that moved) fails ``mkdocs build --strict``, so it fails here. Each page's ```python blocks run
in order in one namespace, in a temporary working folder; a block preceded by ``<!-- skip -->``
is not run (only for what needs a GPU or a network).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# Pages whose examples must run: every docs page, and the README.
EXTRA_PAGES: list[str] = ["README.md"]
PAGES = sorted(p.relative_to(ROOT).as_posix() for p in DOCS.rglob("*.md") if "_ext" not in p.parts) + EXTRA_PAGES
BLOCK = re.compile(r"^(?P<skip><!-- skip -->\n)?```python\n(?P<code>.*?)^```", re.S | re.M)


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """``(line of the fence, code, skipped)`` of every ```python block of a Markdown page, in order."""
    return [(text[: m.start("code")].count("\n"), m.group("code"), bool(m.group("skip"))) for m in BLOCK.finditer(text)]


def _needs_mkdocs() -> None:
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(module) is None:
            pytest.fail(f"{module} is not installed: `make setup` installs the docs extra (pip install -e '.[docs]')")


def test_the_site_builds_strict(tmp_path):
    _needs_mkdocs()
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert out.returncode == 0, f"mkdocs build --strict failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    site = tmp_path / "site"
    for page in ("index.html", "getting-started.html", "concepts.html", "architecture.html", "changelog.html",
                 "api/core.html", "ledger.html", "results/index.html", "gallery.html"):
        assert (site / page).is_file(), f"the site lacks {page}"
    changelog = (site / "changelog.html").read_text()
    headings = [ln.lstrip("#").strip() for ln in (ROOT / "CHANGELOG.md").read_text().splitlines() if ln.startswith("## ")]
    assert headings and all(h in changelog for h in headings), "CHANGELOG.md is not included in the changelog page"
    api = (site / "api" / "core.html").read_text()
    assert 'class="gp">&gt;&gt;&gt;' in api, "docstring examples are not rendered as Python console code"


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks((ROOT / p).read_text())])
def test_page_examples_run(page, tmp_path, monkeypatch):
    blocks = python_blocks((ROOT / page).read_text())
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    module = types.ModuleType("massmech_docs_page")  # a real module: dataclasses defined in a page resolve
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for line, code, skipped in blocks:
        if skipped:
            continue
        try:
            # dont_inherit: the page's code, not this file's `from __future__` flags
            exec(compile(code, f"{page}:{line}", "exec", dont_inherit=True), module.__dict__)  # noqa: S102 - our own docs
        except Exception as err:  # noqa: BLE001 - report which block failed, with the error
            pytest.fail(f"{page}, the python block at line {line} failed: {type(err).__name__}: {err}")
    from massmech.report import plotting

    plotting.close_all()


def test_skipped_examples_stay_few():
    skipped = [(p, line) for p in PAGES for line, _, s in python_blocks((ROOT / p).read_text()) if s]
    total = sum(len(python_blocks((ROOT / p).read_text())) for p in PAGES)
    assert total >= 15, f"only {total} Python examples in the docs: is the block pattern broken?"
    assert len(skipped) <= 4, f"too many skipped examples (only GPU/network ones may be skipped): {skipped}"


def test_the_block_finder():
    text = "x\n```python\na = 1\n```\n<!-- skip -->\n```python\nb = 2\n```\n```bash\nc\n```\n"
    assert python_blocks(text) == [(2, "a = 1\n", False), (6, "b = 2\n", True)]


def test_the_api_pages_cover_every_public_name():
    import massmech

    index = (DOCS / "api" / "index.md").read_text()
    missing = [name for name in massmech.__all__ if f"`{name}`" not in index]
    assert not missing, f"docs/api/index.md does not list {missing}"


def test_the_docstring_fences():
    spec = importlib.util.spec_from_file_location("griffe_doctests", DOCS / "_ext" / "griffe_doctests.py")
    if importlib.util.find_spec("griffe") is None:
        pytest.fail("griffe is not installed: `make setup` installs the docs extra")
    ext = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ext)
    text = "Text :func:`~a.b.f` and :class:`C`.\n>>> f()  # doctest: +ELLIPSIS\n1\n<BLANKLINE>\n\n===  ===\na    b\n===  ===\n1    2\n===  ===\n"
    assert ext.fence(text).split("\n") == [
        "Text `f` and `C`.", "", "```pycon", ">>> f()", "1", "", "```", "", "```text", "===  ===", "a    b",
        "===  ===", "1    2", "===  ===", "```", "",
    ]
    indented = "Examples:\n    >>> f()\n    1\n"
    assert ext.fence(indented) == indented
