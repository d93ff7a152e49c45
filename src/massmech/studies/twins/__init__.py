"""The twins study: small models trained alike but for their position encoding (RoPE, absolute,
none), traced to where massive values come from.

Registered here; the code: :mod:`.config`, :mod:`.data`, :mod:`.train`,
:mod:`.study` (the cells and :func:`run_twins`), :mod:`.seeds`; the models are
:mod:`massmech.core.twin`.
"""

from massmech.studies.registry import StudySpec, lazy_exports, register_study

SPEC = register_study(StudySpec(
    name="twins",
    version=2,  # 2: training and checkpoint cells in one store (the twins-train store retired); 1: checkpoints
    help="train RoPE / absolute / NoPE twins and trace where massive values come from",
    study="massmech.studies.twins.study:TWINS_STUDY",
    config="massmech.studies.twins.config:TwinsConfig",
    presets={
        "demo": "the three twins plus RoPE at 4x the context and a 10x smaller base (about 15 min on 2 cores)",
        "tiny": "the three twins, 300 steps at context 64 (the test suite's)",
        "paper": "sized for one GPU: d_head 64, 8 layers, context 1024",
    },
    build="massmech.studies.twins.config:build",
    run="massmech.studies.twins.study:run_twins",
    quick="massmech.studies.twins.config:quick",
))

__getattr__ = lazy_exports(__name__, {"TwinsConfig": "config", "Variant": "config", "preset": "config",
                                      "run_twins": "study"})
