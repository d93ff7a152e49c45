"""Every ``>>>`` example in the package runs (doctests of every module, on tiny models)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import massmech

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(massmech.__path__, "massmech.")
    if not m.name.endswith(("__main__", "_worker"))
)


@pytest.mark.parametrize("name", MODULES)
def test_examples_run(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name, globs=dict(vars(module))):
        runner.run(test)
    from massmech.report import plotting

    plotting.close_all()
    assert runner.failures == 0, f"{runner.failures} of {runner.tries} examples failed in {name}"
