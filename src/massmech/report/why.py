"""What was known when some of the ledger's rules were fixed: their longer *why* notes.

A rule's ``why`` (:class:`massmech.report.ledger.Rule`) says what changed from the version before
and which numbers were seen when it was fixed; the longer ones live here, verbatim.

>>> "{run}" in EFFECT_WHY and RANK_FIRST_LOOKS.startswith("fixed after first looks")
True
"""

EFFECT_WHY = ("new (issue 26, item 2): a change in a massive K dim is multiplied by a huge Q value in the same dim, so "
              "a control of equal removed variance is not a control of equal effect; fixed before any run of the "
              "{run} sweep, after first looks in earlier sessions (massmech ablate --kl-match and "
              "analyses/kl_matched.py, strict scorer), e.g. SmolLM2 kv_lookup, n = 300, lambda = 5 pre-RoPE mean: "
              "baseline 0.40 / massive 0.11 / KL-matched control 0.06 (KL 0.64 vs 0.61, control scale 2); the judge "
              "is P5 version 2's, unchanged, so nothing in it was chosen from them; first committed in 8a68150 with "
              "the same content built from a template, re-fixed as literal text (which the ledger's test reads) "
              "before any run")
RANK_FIRST_LOOKS = ("fixed after first looks on SmolLM2 only (massmech ablate, lambda = 5 pre-RoPE, n = 150-200, "
                    "runs/rank): kv_lookup 0.49 / massive 0.41 / control 0.35, knowledge_conflict 0.98 / 0.79 / 0.91, "
                    "country_capital_0shot 0.83 / 0.68 / 0.51; the judge is the earlier version's, unchanged, so "
                    "nothing in it was chosen from them; no run of the rank sweep existed")
SIGNIFICANT_DECIDES = ("as version 1, but a test that Holm finds significant always decides: version 1 set a test aside "
                       "as not decidable when its units could not reach Holm's first step, even when Holm's later, "
                       "looser step found it significant")
SIGNIFICANT_WHY = ("a review (2026-12-05, 16:50 UTC) found that version 1 could set a significant downward test aside "
                   "(e.g. 20/0 and 0/6 units: the second is Holm-significant at p = 0.031 but cannot reach 0.025), "
                   "so 'some significant downward: contradicted' would not be reached; fixed after every version-1 "
                   "verdict was known, none of which has such a test")
