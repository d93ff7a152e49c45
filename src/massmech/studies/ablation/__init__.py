"""The ablation study: a grid of disruptions x tasks x models into one resumable table.

Registered here (the registry imports nothing else); the code: :mod:`.config` (the config and
its presets), :mod:`.study` (the cells and :func:`run_sweep`), :mod:`.results` (the table and its
tests), :mod:`.single` (one ablation, the ``ablate`` command).
"""

from massmech.studies.registry import StudySpec, lazy_exports, register_study

EXAMPLES = "examples.parquet"  # a sweep's per-example verdicts: model, task, condition, key, uid, correct

SPEC = register_study(StudySpec(
    name="ablation",
    # 5: a generated reply ends at its first EOS / end of turn (contains, first-line), as the paper's
    # generate() does; 4: the matched control sized exactly under pooled_mean and topped up with the
    # closest dim; 3: removed_variance per cell, matched control, pooled_mean; 2: keys carry study + version
    version=5,
    help="an ablation grid (models x tasks x conditions) into one resumable table",
    study="massmech.studies.ablation.study:ABLATION",
    config="massmech.studies.ablation.config:SweepConfig",
    presets={
        "main": "every task; lambda=5 pre-RoPE massive dims vs the matched, lowest-norm and random controls",
        "paper": "the paper's protocol: post-RoPE, the official top-k and replacement per family, prompt only",
        "rank": "main's massive and matched arms on the tasks with distractors, scored by rank (gold vs distractors)",
        "effect": "rank's grid against controls matched in size, in size within the same RoPE bands, and in effect "
                  "(KL on neutral text)",
        "effect-zero": "effect with the massive dims (and each control's) set to zero",
        "k": "top-k rule, k = 1, 4, 16, on three tasks",
        "layers": "lambda=5 on all / early / middle / late layers, three tasks",
        "dose": "dose-response: top-k, k = 1 ... 16, against the matched control at each k",
        "pairs": "top-k, k = 1 and 4, by coordinate and by whole RoPE pair, each against its matched control",
        "pairs-effect": "pairs on the contextual rank tasks, scored by rank, each arm against its matched and its "
                        "KL-matched control (O12)",
    },
    build="massmech.studies.ablation.config:preset",
    run="massmech.studies.ablation.study:run_sweep",
    quick="massmech.studies.ablation.config:quick",
    model_field="models",
    aliases=("sweep",),
))

__getattr__ = lazy_exports(__name__, {
    "SweepConfig": "config", "preset": "config", "layer_range": "config", "FOCUS_TASKS": "config",
    "LAYER_RANGES": "config", "ABLATION": "study", "AblationStudy": "study", "run_sweep": "study",
    "consolidate": "results", "ablate": "single",
})
