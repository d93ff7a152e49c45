"""The band-attribution study (issue 27, part 2): which RoPE bands carry retrieval and the attention
sink, layer by layer, on the contextual tasks' prompts.

Registered here; the code: :mod:`.config` (the config and its presets), :mod:`.study` (one cell per
task, :func:`run_attribute`). The measurement is :func:`massmech.causal.retrieval.edge_attribution`.
"""

from massmech.studies.registry import StudySpec, lazy_exports, register_study

SPEC = register_study(StudySpec(
    name="attribute",
    version=1,
    help="attention logits at the answer position split by RoPE band and massive pairs: the needle (the answer's "
         "tokens in the prompt) and sink (the first token) advantages, per layer",
    study="massmech.studies.attribute.study:ATTRIBUTE",
    config="massmech.studies.attribute.config:AttributeConfig",
    presets={
        "default": "passkey and kv_lookup, 20 examples each, every layer and head",
        "ledger": "50 examples: the heat maps of the figure gallery",
    },
    build="massmech.studies.attribute.config:preset",
    run="massmech.studies.attribute.study:run_attribute",
    quick="massmech.studies.attribute.config:quick",
    model_field="model",
))

__getattr__ = lazy_exports(__name__, {"AttributeConfig": "config", "run_attribute": "study", "ATTRIBUTE": "study"})
