"""The README's headline table (massmech.report.docs.headline)."""

import pandas as pd

from massmech.report import docs


def test_headline_shows_every_judged_model(monkeypatch):
    """A claim judged only on other models (O13: the paper's saved Llama tensors) gets its columns."""
    rows = [("P1", "smollm2-135m", "reproduces"), ("O13", "llama2-7b-chat", "reproduces"),
            ("O13", "llama3-8b-instruct", "partly"), ("P10", "-", "not testable offline")]
    table = pd.DataFrame([{"key": k, "claim": f"claim {k}", "model": m, "verdict": v} for k, m, v in rows])
    monkeypatch.setattr(docs, "ledger", lambda root, models: table)
    lines = docs.headline("runs", ("smollm2-135m", "gemma3-270m")).splitlines()
    assert lines[0] == "| claim | smollm2-135m | llama2-7b-chat | llama3-8b-instruct | offline |"
    assert lines[3] == "| O13: claim O13 |  | reproduces | partly |  |"
    assert lines[4] == "| P10: claim P10 |  |  |  | not testable offline |"
