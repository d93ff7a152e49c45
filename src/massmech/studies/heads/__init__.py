"""The retrieval-heads study (issue 27): are the heads whose massive RoPE pairs carry the needle's
attention the ones where replacing massive values hurts retrieval?

Registered here; the code: :mod:`.config` (the config and its presets), :mod:`.study` (one cell per
task, :func:`run_heads`). The ranking is :func:`massmech.causal.retrieval.rank_heads`.
"""

from massmech.studies.registry import StudySpec, lazy_exports, register_study

SPEC = register_study(StudySpec(
    name="heads",
    version=1,
    help="retrieval heads: replace Q's massive pairs in the heads whose massive pairs carry the needle, or in as many others",
    study="massmech.studies.heads.study:HEADS",
    config="massmech.studies.heads.config:HeadsConfig",
    presets={
        "default": "passkey and kv_lookup, 100 examples, the top 8 heads vs 5 draws of 8 others",
        "ledger": "200 examples: what the claim ledger reads (O5)",
    },
    build="massmech.studies.heads.config:preset",
    run="massmech.studies.heads.study:run_heads",
    quick="massmech.studies.heads.config:quick",
    model_field="model",
))

__getattr__ = lazy_exports(__name__, {"HeadsConfig": "config", "run_heads": "study", "HEADS": "study"})
