"""The quantization study: which quantizers keep the massive values, and what that does to tasks.

Registered here; the code: :mod:`.config` (methods, grids, the config), :mod:`.study` (the cells
and :func:`run_quant_study`), :mod:`.methods`, :mod:`.smoothing`, :mod:`.kv`, :mod:`.variants`,
:mod:`.preservation`, :mod:`.data`.
"""

from massmech.studies.registry import StudySpec, lazy_exports, register_study

EXAMPLES = "examples.parquet"  # per variant, task and example: correct (what paired tests across variants need)

SPEC = register_study(StudySpec(
    name="quant",
    version=5,  # 5: a generated reply ends at its first EOS / end of turn; 4: keep-massive rows read
    # before QK-norm; 3: W8A8 scales per sequence, KV per-channel ranges from the prompt; 2: zero dims
    help="a grid of quantized variants of one model into one resumable table",
    study="massmech.studies.quant.study:QUANT",
    config="massmech.studies.quant.config:QuantStudyConfig",
    presets={
        "full": "every weight, KV-cache and W_q/W_k-only variant",
        "core": "the questions' variants, most telling first (what 2 CPU cores run on Gemma-3-270M)",
        "weights": "weight-only and W8A8 variants",
        "kv": "KV-cache variants at 4 and 2 bits",
        "qk": "W_q/W_k only at 4 bits: massive rows kept exact, random rows kept, none",
        "qk-draws": "qk, then 10 stochastic roundings of it, keep-random's rows drawn anew each time (O11)",
        "qk-parts": "qk on W_q only, W_k only, local layers only, global layers only (round to nearest)",
        "qk-sites": "qk on W_q only and W_k only (qk-parts for a model without local layers, e.g. Llama-style)",
    },
    build="massmech.studies.quant.config:preset",
    run="massmech.studies.quant.study:run_quant_study",
    quick="massmech.studies.quant.config:quick",
    model_field="model",
    aliases=("quant-study",),
))

__getattr__ = lazy_exports(__name__, {
    "QuantSpec": "config", "QuantStudyConfig": "config", "GRIDS": "config", "preset": "config",
    "QUANT": "study", "run_quant_study": "study",
})
