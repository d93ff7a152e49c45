"""Old module paths (massmech <= 0.1 had 24 flat modules) keep working for one release.

``import massmech.models`` (and the other old paths) gives a module that forwards every
attribute to where it now lives and warns once with :class:`DeprecationWarning`. Nothing here
is imported by massmech itself.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

OLD_MODULES: dict[str, tuple[str, ...]] = {  # old name -> new modules, searched in order
    "models": ("massmech.core.models", "massmech.core.loading", "massmech.core.catalog", "massmech.core.sites", "massmech.core.tiny",
               "massmech.core.bridge", "massmech.errors"),
    "rope": ("massmech.core.rope", "massmech.diagnostics.verify_rope", "massmech.errors"),
    "capture": ("massmech.core.capture", "massmech.core.qkvstats", "massmech.errors"),
    "detect": ("massmech.core.detect",),
    "frequency": ("massmech.core.frequency",),
    "corpus": ("massmech.core.corpus", "massmech.errors"),
    "doctor": ("massmech.diagnostics.doctor",),
    "interventions": ("massmech.causal.intervention", "massmech.causal.disruption", "massmech.errors"),
    "tasks": ("massmech.causal.tasks.builtin", "massmech.causal.tasks.base", "massmech.errors"),
    "evaluate": ("massmech.causal.evaluate", "massmech.stats"),
    "runs": ("massmech.infra.runs", "massmech.infra.io", "massmech.errors"),
    "jobs": ("massmech.studies.analyze",),
    "sweeps": ("massmech.studies.ablation",),
    "quantize": ("massmech.studies.quant.methods", "massmech.studies.quant.kv",
                 "massmech.studies.quant.preservation", "massmech.errors"),
    "smoothing": ("massmech.studies.quant.smoothing", "massmech.errors"),
    "quant_study": ("massmech.studies.quant.study", "massmech.studies.quant.config",
                    "massmech.studies.quant.variants"),
    "twins": ("massmech.studies.twins.model", "massmech.errors"),
    "twin_data": ("massmech.studies.twins.data",),
    "twin_train": ("massmech.studies.twins.train", "massmech.studies.twins.config"),
    "twin_study": ("massmech.studies.twins.study",),
    "plotting": ("massmech.report.plotting",),
    "compare": ("massmech.studies.compare",),
}
# ``massmech.evaluate`` and ``massmech.compare`` are also public functions. Importing their old
# module path makes ``massmech.<name>`` this forwarding module, which therefore stays callable.


class _Forward(types.ModuleType):
    def __call__(self, *args, **kwargs):
        old = self.__name__.rpartition(".")[2]
        return getattr(importlib.import_module(OLD_MODULES[old][0]), old)(*args, **kwargs)

    def __getattr__(self, name: str):
        for target in OLD_MODULES[self.__name__.rpartition(".")[2]]:
            module = importlib.import_module(target)
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")


class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        return _Forward(spec.name)

    def exec_module(self, module) -> None:
        old = module.__name__.rpartition(".")[2]
        warnings.warn(
            f"massmech.{old} moved to {OLD_MODULES[old][0]}; the old path goes away in the next release",
            DeprecationWarning, stacklevel=2,
        )


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        head, _, tail = fullname.rpartition(".")
        if head == "massmech" and tail in OLD_MODULES:
            return importlib.machinery.ModuleSpec(fullname, _Loader())
        return None


def install() -> None:
    """Register the finder for old module paths (idempotent)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
