"""The ablation study's results table: one row per cell, paired tests against the baseline and
against the variance-matched control, Holm's correction per family (see :mod:`massmech.stats`)."""

from __future__ import annotations

import json

import pandas as pd

from massmech.causal.evaluate import BASELINE
from massmech.stats import chance_normalised, describe, evaluable, holm, mcnemar_exact

COLUMNS = [
    "model", "task", "kind", "scoring", "scorer", "condition", "role", "control", "rule", "lam", "k", "target",
    "stage", "granularity", "layer_range", "accuracy", "ci_low", "ci_high", "n", "chance", "acc_norm", "evaluable",
    "n_dims", "removed_variance",
    "delta", "delta_ci_low", "delta_ci_high", "b", "c", "p_value", "p_holm",
    "b_vs_matched", "c_vs_matched", "p_vs_matched", "p_vs_matched_holm",
    "kl_massive", "kl_control", "kl_scale", "kl_matched", "neutral_variance_massive", "neutral_variance_control",
    "removed_energy_massive", "removed_energy_control",
    "b_vs_kl", "c_vs_kl", "p_vs_kl", "p_vs_kl_holm", "error", "key", "task_spec",
]
#: the KL match's numbers (on the neutral windows) a kl control's row and its massive row carry
#: (``KLMatch.row()`` name -> column): KL, removed variance and removed energy of both arms side by side
_KL = {"kl_massive": "kl_massive", "kl_control": "kl_control", "control_scale": "kl_scale", "matched": "kl_matched",
       "removed_variance_massive": "neutral_variance_massive", "removed_variance_control": "neutral_variance_control",
       "removed_energy_massive": "removed_energy_massive", "removed_energy_control": "removed_energy_control"}


def consolidate(cells: list[dict]) -> pd.DataFrame:
    """The results table from finished cells (one row each; paired to the baseline of its model and task)."""
    base = {(c["model"], c["task"]): c["verdicts"] for c in cells if c["role"] == BASELINE}
    # a baseline that could not run (its error says why) has nothing to evaluate
    ok = {mt: bool(v) and evaluable(int(sum(v.values())), len(v), _chance(cells, mt)) for mt, v in base.items()}
    matched = {_point(c): c["verdicts"] for c in cells
               if (c["disruption"] or {}).get("control") == "matched" and "control_kind" not in c}
    # the kl control of a massive condition: its grid point is the condition's (its scale is the match's)
    by_kl = {_point(c, scale=False): c for c in cells if c.get("control_kind") == "kl"}
    rows = []
    for c in cells:
        v = pd.Series(c["verdicts"], dtype=float)
        b = base.get((c["model"], c["task"]))
        paired = None if b is None or c["role"] == BASELINE else pd.Series(b, dtype=float).reindex(v.index).to_numpy()
        # a cell that could not run on this model (its error says why) has no verdicts and no statistics
        stats = describe(v.to_numpy(), baseline=paired, seed=c["seed"]) if len(v) else dict.fromkeys(
            ("mean", "ci_low", "ci_high"), float("nan"))
        d = c["disruption"] or {}
        row = {
            "model": c["model"], "task": c["task"], "kind": c["kind"], "scoring": c["scoring"],
            "scorer": c.get("scorer", "strict" if c["scoring"] == "exact" else "choice"),
            "condition": c["condition"], "role": c["role"], "control": c.get("control_kind", d.get("control")),
            # a rule's parameter only where it applies: a top-k row has no lambda, and vice versa
            "rule": d.get("rule"), "lam": d.get("lam") if d.get("rule") == "lambda" else None,
            "k": d.get("k") if d.get("rule") == "topk" else None, "target": d.get("target"),
            "stage": d.get("stage"), "granularity": d.get("granularity", "dim") if d else None,
            "layer_range": c["layer_range"], "accuracy": stats["mean"],
            "ci_low": stats["ci_low"], "ci_high": stats["ci_high"], "n": c["n"], "chance": c["chance"],
            "acc_norm": chance_normalised(stats["mean"], c["chance"]),
            "evaluable": ok.get((c["model"], c["task"])), "n_dims": c["n_dims"],
            "removed_variance": c["removed_variance"], "delta": stats.get("delta"),
            "delta_ci_low": stats.get("delta_ci_low"), "delta_ci_high": stats.get("delta_ci_high"),
            "b": stats.get("b"), "c": stats.get("c"), "p_value": stats.get("p_value"), "key": c["key"],
            "error": c.get("error"),
        }
        if c["role"] == "massive" and _point(c) in matched and len(v) and len(matched[_point(c)]):  # the size-matched comparison: massive vs matched
            m = pd.Series(matched[_point(c)], dtype=float).reindex(v.index).to_numpy()
            row["b_vs_matched"], row["c_vs_matched"], row["p_vs_matched"] = mcnemar_exact(v.to_numpy(), m)
        kl = c if c.get("control_kind") == "kl" else by_kl.get(_point(c, scale=False)) if c["role"] == "massive" else None
        if kl is not None:  # KL, removed energy of both arms side by side, on the kl row and its massive row
            row |= {col: (kl.get("kl_match") or {}).get(name) for name, col in _KL.items()}
            if kl is not c and len(v) and kl["verdicts"]:
                m = pd.Series(kl["verdicts"], dtype=float).reindex(v.index).to_numpy()
                row["b_vs_kl"], row["c_vs_kl"], row["p_vs_kl"] = mcnemar_exact(v.to_numpy(), m)
        rows.append(row)
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["task_spec"], table["task"] = table["task"], table["task"].map(_short_names(cells))
    # Holm across the table's evaluable comparisons; rows whose baseline is at chance or floor get none
    table["p_holm"] = holm([p if e else None for p, e in zip(table["p_value"], table["evaluable"], strict=True)])
    # a second family: each massive condition against its variance-matched control
    table["p_vs_matched_holm"] = holm([p if e and p == p else None
                                      for p, e in zip(table["p_vs_matched"], table["evaluable"], strict=True)])
    # a third: each massive condition against its control matched in effect (KL on neutral text)
    table["p_vs_kl_holm"] = holm([p if e and p == p else None
                                 for p, e in zip(table["p_vs_kl"], table["evaluable"], strict=True)])
    for col in ("lam", "removed_variance", "delta", "delta_ci_low", "delta_ci_high", "p_value", "p_holm",
                "p_vs_matched", "p_vs_matched_holm", *(c for c in _KL.values() if c != "kl_matched"), "p_vs_kl",
                "p_vs_kl_holm"):
        table[col] = table[col].astype(float)
    for col in ("k", "b", "c", "b_vs_matched", "c_vs_matched", "b_vs_kl", "c_vs_kl"):
        table[col] = table[col].astype("Int64")
    return table


def _short_names(cells: list[dict]) -> dict[str, str]:
    """Each task spec's own name (``capitals``, not ``file:capitals.jsonl#question=...``), where the
    names tell the specs apart; else the specs themselves (``task_spec`` always keeps them).

    >>> cfg = {"name": "capitals"}
    >>> _short_names([{"task": "file:capitals.jsonl#question=q", "task_config": cfg}, {"task": "passkey"}])
    {'file:capitals.jsonl#question=q': 'capitals', 'passkey': 'passkey'}
    """
    names = {c["task"]: (c.get("task_config") or {}).get("name", c["task"]) for c in cells}
    return names if len(set(names.values())) == len(names) else {t: t for t in names}


def _point(cell: dict, scale: bool = True) -> tuple:
    """A cell's grid point without its control (and, ``scale=False``, its control's scale): a
    massive condition and its controls share it."""
    d = dict(cell["disruption"] or {})
    d.pop("control", None)
    if not scale:
        d.pop("control_scale", None)
    return cell["model"], cell["task"], json.dumps(d, sort_keys=True)


def _chance(cells: list[dict], model_task: tuple[str, str]) -> float:
    return next(c["chance"] for c in cells if (c["model"], c["task"]) == model_task)
