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
import shlex
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


BASH = re.compile(r"^(?P<run><!-- run -->\n)?```bash\n(?P<code>.*?)^```", re.S | re.M)


def massmech_commands(text: str) -> list[tuple[list[str], bool]]:
    """``(argv after "massmech", run)`` of every ``massmech`` command in a page's ```bash blocks
    (continuation lines joined, comments dropped); ``run``: the block is marked ``<!-- run -->``."""
    out = []
    for m in BASH.finditer(text):
        for line in m.group("code").replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["massmech"]:
                out.append((words[1:], bool(m.group("run"))))
    return out


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """``(line of the fence, code, skipped)`` of every ```python block of a Markdown page, in order."""
    return [(text[: m.start("code")].count("\n"), m.group("code"), bool(m.group("skip"))) for m in BLOCK.finditer(text)]


def _needs_mkdocs() -> None:
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(module) is None:
            pytest.fail(f"{module} is not installed: `make setup` installs the docs extra (pip install -e '.[docs]')")


def build_site(root: Path, site: Path) -> subprocess.CompletedProcess:
    """``mkdocs build --strict`` of the project at ``root``, as ``make docs`` runs it (no ``--quiet``:
    with it, mkdocs stops counting warnings and ``--strict`` never fires)."""
    _needs_mkdocs()
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(root / "mkdocs.yml"),
         "--site-dir", str(site)],
        cwd=root, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def test_make_docs_runs_the_same_build():
    make = (ROOT / "Makefile").read_text()
    assert "-m mkdocs build --strict --site-dir site" in make and "--quiet" not in make
    assert "make docs" in (ROOT / ".ci" / "run").read_text() or "reproduce" in (ROOT / ".ci" / "run").read_text()


def test_the_site_builds_strict(tmp_path):
    out = build_site(ROOT, tmp_path / "site")
    log = out.stdout + out.stderr
    assert out.returncode == 0 and "WARNING" not in log, f"mkdocs build --strict failed:\n{log[-6000:]}"
    site = tmp_path / "site"
    for page in ("index.html", "getting-started.html", "concepts.html", "architecture.html", "changelog.html",
                 "api/core.html", "ledger.html", "results/index.html", "gallery.html"):
        assert (site / page).is_file(), f"the site lacks {page}"
    changelog = (site / "changelog.html").read_text()
    headings = [ln.lstrip("#").strip() for ln in (ROOT / "CHANGELOG.md").read_text().splitlines() if ln.startswith("## ")]
    assert headings and all(h in changelog for h in headings), "CHANGELOG.md is not included in the changelog page"
    api = (site / "api" / "core.html").read_text()
    assert 'class="gp">&gt;&gt;&gt;' in api, "docstring examples are not rendered as Python console code"


def test_a_missing_image_fails_the_build(tmp_path):
    """The same build on a copy of the project with one figure the pages show removed must fail."""
    import shutil

    copy = tmp_path / "project"
    for name in ("docs", "src"):
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("mkdocs.yml", "CHANGELOG.md", "README.md"):
        shutil.copy(ROOT / name, copy / name)
    pages = "\n".join(f.read_text() for f in (copy / "docs").rglob("*.md"))
    shown = [f for f in sorted((copy / "docs").rglob("*.png")) if f.name in pages]
    assert shown, "the docs show no figure"
    shown[0].unlink()
    out = build_site(copy, tmp_path / "site")
    assert out.returncode != 0, "a page shows a missing image, yet the strict build passed"
    assert shown[0].name in out.stdout + out.stderr


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
    from massmech.cli import main

    for argv, run in massmech_commands((ROOT / page).read_text()):
        if run:  # a command on the page's own files, run as written after its Python
            assert main(argv) == 0, f"{page}: `massmech {shlex.join(argv)}` failed"
    from massmech import plotting

    plotting.close_all()


@pytest.mark.parametrize("page", [p for p in PAGES if massmech_commands((ROOT / p).read_text())])
def test_every_command_on_a_page_parses(page):
    """Every ``massmech`` command shown is one the CLI takes: its command, flags and choices (the
    ones on a page's own files also run, in test_page_examples_run)."""
    from massmech.cli import build_parser

    for argv, _ in massmech_commands((ROOT / page).read_text()):
        try:
            build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{page}: `massmech {shlex.join(argv)}` is not a command the CLI takes")


def test_the_command_finder():
    text = "```bash\nmassmech analyze --out x \\\n  --json  # c\nls\n```\n<!-- run -->\n```bash\nmassmech models\n```\n"
    assert massmech_commands(text) == [(["analyze", "--out", "x", "--json"], False), (["models"], True)]
    from massmech.cli import build_parser

    with pytest.raises(SystemExit):  # what the page check catches: a flag the CLI does not take
        build_parser().parse_args(["analyze", "--out", "x", "--no-such-flag"])


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
