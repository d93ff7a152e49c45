"""The ledger's page, ``docs/ledger.md``: every claim's verdict by its newest rule, then every rule version.

>>> text = ledger_markdown("no-runs-here", models=("tiny-llama",))
>>> text.splitlines()[1], "not run" in text
('# Claim ledger', True)
"""

from __future__ import annotations

import os

from massmech.report.ledger import CLAIMS, ledger
from massmech.report.pages import GENERATED
from massmech.report.runs import MODELS


def _rule_lines() -> list[str]:
    lines = ["## Rules and their versions", "",
             "A rule is fixed in a commit and never edited; a change is a new version, and the tables above show "
             "the newest version's verdict with the older ones beside it. *timing* says whether the run's numbers "
             "were made after the rule was fixed (a rule fixed after its run was written knowing the numbers): a run "
             "rebuilt from stored cells counts from its oldest cell, and a model whose run of that config existed "
             "when the rule was fixed (the rule's `seen`) stays 'rule after run' whenever it is rerun.", ""]
    for c in CLAIMS:
        for r in c.rules:
            when = f"fixed {r.fixed[:10]} in `{r.commit}`" if r.commit else "not yet committed"
            lines.append(f"- **{c.key} v{r.version}** ({when}; scope: {r.scope}): {r.text}."
                         + (f" *Why:* {r.why}." if r.why else ""))
    return lines


def ledger_markdown(root: str | os.PathLike = "runs", models: tuple[str, ...] = MODELS) -> str:
    """The ledger page (``docs/ledger.md``), generated from the run folders under ``root``."""
    t = ledger(root, models)
    lines = [GENERATED, "# Claim ledger", "",
             "Every claim of the paper (Jin et al., ICML 2025; the abstract's claims as quoted in the official "
             "code's README) and of massmech, the run that tests it, what was measured and a verdict by the "
             "newest version of the claim's rule (every version, its date, commit and family-wise scope are listed "
             "below). Regenerate with `massmech report --ledger runs --out docs/ledger.md`.", ""]
    for part, ours in (("The paper's claims", False), ("massmech's own findings", True)):
        lines += [f"## {part}", "", "| # | claim | model | measured | verdict | earlier versions | timing |",
                  "|---|---|---|---|---|---|---|"]
        for r in t[t.ours == ours].itertuples():
            version = f" (v{r.version})" if r.version else ""
            lines.append(f"| {r.key} | {r.claim} | {r.model} | {r.measured} | **{r.verdict}**{version} | "
                         f"{r.earlier or '-'} | {r.timing if isinstance(r.timing, str) and r.timing else '-'} |")
        lines.append("")
    counts = t.verdict.value_counts()
    lines += ["Verdicts (newest rules): " + ", ".join(f"{v} {n}" for v, n in counts.items()) + ".", ""]
    return "\n".join(lines + _rule_lines()) + "\n"
