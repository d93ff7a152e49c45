"""One registry of studies: a study is one folder that registers a :class:`StudySpec`.

Each subpackage of :mod:`massmech.studies` (``analyze``, ``ablation``, ``attribute``, ``heads``, ``quant``, ``shift``,
``twins``, or
yours) registers its spec in its ``__init__.py`` with :func:`register_study`, naming what it
provides as ``"module:attribute"`` strings, so registering imports nothing heavy: the CLI builds
``massmech --help`` from the registry without importing torch. Everything else derives from it:

* the CLI's study subcommands (``massmech <name> --preset P ...``, flags from the config class);
* the presets (:meth:`StudySpec.preset`) and their one-line descriptions;
* the cell versions (:func:`cell_versions`), which key every cell the study stores;
* the runs the claim ledger reads and ``massmech reproduce`` makes
  (:mod:`massmech.report.ledger` names them as study and preset).

``tests/studies/test_registry.py`` fails if any of these drift from the registry.

>>> sorted(studies())
['ablation', 'analyze', 'attribute', 'heads', 'quant', 'shift', 'twins']
>>> get_study("sweep").name  # an older name of the ablation study still finds it
'ablation'
>>> get_study("ablation").preset("k", model="tiny-llama", n=4).ks
(1, 4, 16)
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any

from massmech.errors import ConfigError


def _attr(ref: str) -> Any:
    """``"package.module:attribute"`` -> the attribute (imported on demand)."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclasses.dataclass(frozen=True)
class StudySpec:
    """What a study is, for everything built on top of it.

    Attributes:
        name: The one name of the study: its cells' store, its run folders' kind, its CLI
            subcommand, the ledger's runs.
        version: The schema version of its cells (bump it when what a cell holds or how it is
            computed changes: its old cells are then recomputed, never reused).
        help: One line for the CLI.
        study: ``"module:OBJECT"``: the :class:`~massmech.infra.study.Study` object.
        config: ``"module:Class"``: its frozen config dataclass (CLI flags derive from its fields).
        presets: Preset name -> one-line description (the first is the default).
        build: ``"module:function"``: ``function(preset, **overrides) -> config``.
        run: ``"module:function"``: the runner, ``function(config, out, *, executor, cells,
            load_options, overwrite, progress)``: runs (or resumes) the study into ``out``.
        quick: ``"module:function"``: ``function(config) -> config``, a small version of a
            config for ``massmech reproduce --quick`` (same code path, less data).
        model_field: The config field naming the model (``"model"``), or models (``"models"``,
            a tuple), or ``""`` for a study without one.
        aliases: Older names (CLI commands, run kinds) that still find the study.
    """

    name: str
    version: int
    help: str
    study: str
    config: str
    presets: Mapping[str, str]
    build: str
    run: str
    quick: str
    model_field: str = ""
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.presets:
            raise ConfigError(f"study {self.name!r} registers no preset")
        if self.model_field not in ("", "model", "models"):
            raise ConfigError(f"study {self.name!r}: model_field must be '', 'model' or 'models'")

    def __repr__(self) -> str:
        return f"StudySpec({self.name!r}, v{self.version}, presets={list(self.presets)})"

    @property
    def default_preset(self) -> str:
        return next(iter(self.presets))

    @property
    def kinds(self) -> tuple[str, ...]:
        """The run kinds of its folders: its name, then older names (folders written before)."""
        return (self.name, *self.aliases)

    def load(self) -> Any:
        """The study object (imports the study's code)."""
        return _attr(self.study)

    def runner(self) -> Any:
        """The runner (imports the study's code)."""
        return _attr(self.run)

    def config_class(self) -> type:
        """The config dataclass."""
        return _attr(self.config)

    def preset(self, name: str | None = None, *, model: str | None = None, **overrides: Any) -> Any:
        """The config of preset ``name`` (default: the first), for ``model`` if given, with ``overrides``.

        Raises:
            ConfigError: Unknown preset or field (the message lists the valid ones).
        """
        name = name or self.default_preset
        if name not in self.presets:
            raise ConfigError(f"unknown {self.name} preset {name!r}; presets are {', '.join(self.presets)}")
        fields = {f.name for f in dataclasses.fields(self.config_class())}
        bad = sorted(set(overrides) - fields)
        if bad:
            raise ConfigError(f"{self.name} configs have no field(s) {bad}; fields are {', '.join(sorted(fields))}")
        if model is not None:
            if not self.model_field:
                raise ConfigError(f"the {self.name} study takes no model")
            overrides[self.model_field] = (model,) if self.model_field == "models" else model
        return _attr(self.build)(name, **overrides)

    def quick_config(self, config: Any) -> Any:
        """The ``--quick`` version of a config."""
        return _attr(self.quick)(config)


def lazy_exports(package: str, names: Mapping[str, str]) -> Any:
    """A module ``__getattr__`` (PEP 562) for a study folder: ``names`` (name -> its submodule) are
    imported on first use, so registering the study imports nothing heavy.

    >>> getattr_ = lazy_exports("massmech.studies.ablation", {"preset": "config"})
    >>> getattr_("preset").__module__
    'massmech.studies.ablation.config'
    """

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{names[name]}"), name)

    return __getattr__


_STUDIES: dict[str, StudySpec] = {}


def register_study(spec: StudySpec) -> StudySpec:
    """Add a study to the registry (call it in the study folder's ``__init__.py``).

    Raises:
        ConfigError: Another study already has this name or alias.
    """
    taken = {n: s.name for s in _STUDIES.values() if s.name != spec.name for n in (s.name, *s.aliases)}
    clash = [n for n in (spec.name, *spec.aliases) if n in taken]
    if clash:
        raise ConfigError(f"study {spec.name!r}: the name(s) {clash} belong to {taken[clash[0]]!r}")
    _STUDIES[spec.name] = spec
    return spec


def studies() -> dict[str, StudySpec]:
    """Every registered study, by name (the study folders of :mod:`massmech.studies` are found once)."""
    import massmech.studies as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.ispkg:
            importlib.import_module(f"{package.__name__}.{info.name}")  # its __init__ registers it
    return dict(_STUDIES)


def get_study(name: str) -> StudySpec:
    """A study by name or older alias.

    Raises:
        ConfigError: No such study (the message lists them).
    """
    known = studies()
    for spec in known.values():
        if name in spec.kinds:
            return spec
    raise ConfigError(f"unknown study {name!r}; studies are {', '.join(known)}")


def cell_versions() -> dict[str, int]:
    """Study name -> the schema version of its cells.

    >>> cell_versions()["ablation"] >= 1
    True
    """
    return {name: spec.version for name, spec in studies().items()}
