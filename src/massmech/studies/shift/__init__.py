"""The position-shift study (the paper's P9): does the slowest RoPE band change least when the same
text moves later in the context?

Registered here; the code: :mod:`.config` (the config and its presets), :mod:`.study` (one cell per
shift, :func:`run_shift`). The measurement is :func:`massmech.core.shift.shift_changes`.
"""

from massmech.studies.registry import StudySpec, lazy_exports, register_study

SPEC = register_study(StudySpec(
    name="shift",
    version=1,
    help="position shift (P9): how much each RoPE band's Q/K and attention logits change when a text moves later",
    study="massmech.studies.shift.study:SHIFT",
    config="massmech.studies.shift.config:ShiftConfig",
    presets={
        "default": "32 BBC texts of 128 tokens moved 16, 64 and 256 tokens later (a few minutes on 2 cores)",
        "ledger": "64 texts: what the claim ledger reads (P9)",
    },
    build="massmech.studies.shift.config:preset",
    run="massmech.studies.shift.study:run_shift",
    quick="massmech.studies.shift.config:quick",
    model_field="model",
))

__getattr__ = lazy_exports(__name__, {"ShiftConfig": "config", "run_shift": "study", "SHIFT": "study"})
