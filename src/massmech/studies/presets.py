"""One registry of named study configs, used by the CLI, ``analyses/`` and ``paper_figures/``.

A preset is ``(study, name)``; :func:`preset` builds its frozen config, with any field
overridden by keyword. Model-dependent presets take ``models=`` (sweeps) or ``model=`` (quant).

=========  ============================  ==================================================
study      names                         what
=========  ============================  ==================================================
analyze    ``default``                   the main job on BBC news (:class:`AnalyzeConfig`)
sweep      ``main``, ``paper``,          ablation grids (:func:`massmech.studies.ablation.preset`)
           ``k``, ``layers``, ``dose``
quant      ``full``, ``core``,           quantization grids (:data:`massmech.studies.quant.config.GRIDS`)
           ``weights``, ``kv``
twins      ``tiny``, ``demo``, ``paper``  the twins (:data:`massmech.studies.twins.config.PRESETS`)
=========  ============================  ==================================================

>>> preset("sweep", "k", models=("tiny-llama",), n=4).ks
(1, 4, 16)
>>> sorted(names())
['analyze', 'quant', 'sweep', 'twins']
"""

from __future__ import annotations

import dataclasses
from typing import Any

from massmech.errors import ConfigError

RUNS = {  # where `make` keeps each study's runs (paper_figures/ reads them from there)
    "analyze": "runs/analyze/{model}",
    "sweep": "runs/sweeps/{name}",
    "quant": "runs/quant/{model}",
    "twins": "runs/twins/{name}",
}
MAKE_TARGET = {"analyze": "make analyze", "sweep": "make ablate", "quant": "make quant", "twins": "make twins"}


def names() -> dict[str, tuple[str, ...]]:
    """Preset names per study."""
    from massmech.studies.quant.config import GRIDS
    from massmech.studies.twins.config import PRESETS

    return {"analyze": ("default",), "sweep": ("main", "paper", "k", "layers", "dose"), "quant": tuple(GRIDS), "twins": tuple(PRESETS)}


def config_class(study: str) -> type:
    """The frozen config dataclass of a study."""
    if study == "analyze":
        from massmech.studies.analyze import AnalyzeConfig

        return AnalyzeConfig
    if study == "sweep":
        from massmech.studies.ablation import SweepConfig

        return SweepConfig
    if study == "quant":
        from massmech.studies.quant.config import QuantStudyConfig

        return QuantStudyConfig
    if study == "twins":
        from massmech.studies.twins.config import TwinsConfig

        return TwinsConfig
    raise ConfigError(f"unknown study {study!r}; studies are {', '.join(RUNS)}")


def preset(study: str, name: str, **overrides: Any) -> Any:
    """The config of preset ``name`` of ``study``, with ``overrides`` applied.

    Raises:
        ConfigError: Unknown study, preset or field (the message lists the valid ones).
    """
    known = names()
    if study not in known:
        raise ConfigError(f"unknown study {study!r}; studies are {', '.join(known)}")
    if name not in known[study]:
        raise ConfigError(f"unknown {study} preset {name!r}; presets are {', '.join(known[study])}")
    fields = {f.name for f in dataclasses.fields(config_class(study))}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ConfigError(f"{study} configs have no field(s) {bad}; fields are {', '.join(sorted(fields))}")
    if study == "analyze":
        return config_class(study)(**overrides)
    if study == "sweep":
        from massmech.studies.ablation import preset as sweep_preset

        return sweep_preset(name, **overrides)
    if study == "quant":
        from massmech.studies.quant.config import study_config

        return study_config(overrides.pop("model", "smollm2-135m"), name, **overrides)
    from massmech.studies.twins.config import preset as twins_preset

    return dataclasses.replace(twins_preset(name), **overrides)
