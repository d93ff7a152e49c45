"""Every ``>>>`` example in the package runs (doctests of every module, on tiny models)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re

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
    from massmech import plotting

    plotting.close_all()
    assert runner.failures == 0, f"{runner.failures} of {runner.tries} examples failed in {name}"


# ------------------------------------------------------------------ every public name has an example
LAYERS_WITH_EXAMPLES = ("massmech.core", "massmech.causal")
# Public names allowed to lack an example (none today). This set may only shrink (a test says so).
KNOWN_GAPS: set[str] = set()


def _public_api():
    """``(qualified name, docstring, class docstring or None)`` of every public function, class and
    method defined in the core and causal layers (methods: functions, class/static methods and
    properties a class defines itself; names with a leading underscore are private)."""
    import inspect

    for layer in LAYERS_WITH_EXAMPLES:
        package = importlib.import_module(layer)
        for info in pkgutil.walk_packages(package.__path__, layer + "."):
            module = importlib.import_module(info.name)
            for name, obj in vars(module).items():
                if name.startswith("_") or getattr(obj, "__module__", None) != info.name:
                    continue
                if inspect.isclass(obj):
                    class_doc = obj.__dict__.get("__doc__")
                    yield f"{info.name}.{name}", class_doc, None
                    for attr, member in vars(obj).items():
                        fn = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
                        if not attr.startswith("_") and inspect.isfunction(fn):
                            yield f"{info.name}.{name}.{attr}", fn.__doc__, class_doc
                elif inspect.isroutine(inspect.unwrap(obj)):
                    yield f"{info.name}.{name}", obj.__doc__, None


def _lacks_example(qualname: str, doc: str | None, class_doc: str | None) -> bool:
    """No ``>>>`` in its own docstring; a method may instead be used in its class's examples."""
    if doc and ">>>" in doc:
        return False
    if class_doc is not None:
        attr = qualname.rsplit(".", 1)[1]
        code = [ln for ln in class_doc.splitlines() if ln.strip().startswith((">>>", "..."))]
        return not any(re.search(rf"\.{attr}\b", ln) for ln in code)
    return True


def test_every_public_function_of_core_and_causal_has_an_example():
    lacking = {q: _lacks_example(q, doc, cls) for q, doc, cls in _public_api()}
    assert len(lacking) > 100, f"found only {len(lacking)} public names: is the walk broken?"
    for name in ("massmech.core.detect.massive_mask", "massmech.core.rope.RopeSpec.pair_dims",  # a function, a method,
                 "massmech.core.models.LoadedModel.rope", "massmech.causal.tasks.sources.countries"):  # a property, a cached one
        assert name in lacking, f"the walk missed {name}"
    missing = sorted(q for q, lacks in lacking.items() if lacks and q not in KNOWN_GAPS)
    assert not missing, "public names without a >>> example (add one to the docstring):\n" + "\n".join(missing)
    stale = sorted(q for q in KNOWN_GAPS if not lacking.get(q, False))
    assert not stale, f"remove these from KNOWN_GAPS (they have an example now, or are gone): {stale}"


def test_the_example_check_catches_a_missing_example():
    assert _lacks_example("m.f", "No example here.", None)
    assert not _lacks_example("m.f", "Doc.\n\n>>> f()\n1\n", None)
    assert _lacks_example("m.C.g", None, "Class.\n\n>>> c = C()\n")
    assert not _lacks_example("m.C.g", None, "Class.\n\n>>> C().g(1)\n2\n")
    assert _lacks_example("m.C.g", None, "Calls .g in prose only.\n>>> C().gg()\n")
