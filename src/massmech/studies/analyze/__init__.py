"""The analyze study (the main job): Q/K/V statistics on natural text, frequency analysis, the
emergence layer, figures.

Registered here; the code: :mod:`.config` (the config and its presets), :mod:`.study` (the
capture cell and :func:`run_analyze`).
"""

from massmech.studies.registry import StudySpec, lazy_exports, register_study

SPEC = register_study(StudySpec(
    name="analyze",
    version=3,  # 3: Q/K before QK-norm too (raw); 2: one QKVStats per chunk of windows; 1: one capture
    help="the main job: Q/K/V statistics on natural text, frequency analysis, emergence layer, figures",
    study="massmech.studies.analyze.study:ANALYZE",
    config="massmech.studies.analyze.config:AnalyzeConfig",
    presets={
        "default": "4,096 tokens of BBC news in windows of 512 (about a minute on 2 cores)",
        "ledger": "16,384 tokens: what the claim ledger reads (P1-P4)",
    },
    build="massmech.studies.analyze.config:preset",
    run="massmech.studies.analyze.study:run_analyze",
    quick="massmech.studies.analyze.config:quick",
    model_field="model",
))

__getattr__ = lazy_exports(__name__, {"AnalyzeConfig": "config", "run_analyze": "study", "ANALYZE": "study",
                                      "emergence_summary": "study", "default_layers": "config"})
