"""One ablation: baseline vs massive-disrupted vs control accuracy on one task (the ``ablate`` command)."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from massmech.causal.disruption import CONTROLS, Disruption
from massmech.causal.evaluate import BASELINE, read_text, score, summarize
from massmech.causal.klmatch import neutral_kl_match
from massmech.causal.tasks.base import Task
from massmech.causal.tasks.builtin import get_task
from massmech.causal.vocabulary import MATCHED_CONTROLS
from massmech.core.loading import load_model
from massmech.core.models import LoadedModel
from massmech.errors import DisruptionError
from massmech.files.io import write_json
from massmech.files.provenance import manifest
from massmech.files.runs import atomic_run_dir, check_out
from massmech.stats import auroc, auroc_ci, delong_paired_test, evaluable, mcnemar_exact


def _plain(x: Any, column: str) -> int | float | None:
    """A JSON value: ints for counts, ``None`` for a missing statistic (the baseline's p-value)."""
    if x is None or (isinstance(x, float) and x != x) or pd.isna(x):
        return None
    return int(x) if column in ("n", "b", "c") else float(x)


def _gold(e: Any) -> str:
    """The gold answer of an example as text (the gold option of a choice task)."""
    return e.options[e.label] if e.options and e.label >= 0 else e.answer


def _versus(df: pd.DataFrame, a: str, b: str) -> dict:
    """The exact McNemar test of condition ``a`` against ``b`` on the same examples: ``b`` counts
    examples right under ``a`` and wrong under ``b``, ``c`` the reverse."""
    pa = df[df.condition == a].set_index("uid").correct.astype(float)
    pb = df[df.condition == b].set_index("uid").correct.astype(float).reindex(pa.index)
    b_, c_, p = mcnemar_exact(pa.to_numpy(), pb.to_numpy())
    return {"b": b_, "c": c_, "p_value": p}


def _separation(df: pd.DataFrame, by_uid: dict) -> dict | None:
    """How well the log-probability margin separates the two gold classes of a two-option task,
    threshold-free: per condition the AUROC of ``logprob(option 0) - logprob(option 1)`` with
    "the gold answer is option 0" as the positive class (DeLong interval), and for the disrupted
    conditions DeLong's paired test against the baseline. ``None`` for other tasks; ``{"error":
    ...}`` when a class has fewer than 2 examples."""
    if any(len(e.options) != 2 for e in by_uid.values()):
        return None
    out: dict[str, Any] = {"score": "logprob(option 0) - logprob(option 1)", "positive": "gold is option 0"}
    scored = {}
    for name, g in df.groupby("condition", sort=False):
        g = g.sort_values("uid")
        margin = np.array([lp[0] - lp[1] for lp in g.logprobs])
        first = np.array([by_uid[u].label == 0 for u in g.uid])
        scored[name] = (margin[first], margin[~first])
    pos, neg = scored[BASELINE]
    if min(len(pos), len(neg)) < 2:
        return out | {"error": f"{len(pos)} examples with gold option 0 and {len(neg)} with option 1: AUROC needs 2 of each"}
    for name, (p, q) in scored.items():
        low, high = auroc_ci(p, q)
        row = {"auroc": auroc(p, q), "ci_low": low, "ci_high": high}
        if name != BASELINE:
            row["p_vs_baseline"] = delong_paired_test(p, q, pos, neg).p_value
        out[name] = row
    return out


def _control(lm: LoadedModel, disruption: Disruption, control: str, kl_match: bool, seed: int) -> tuple[Disruption, dict | None]:
    """The control condition, scaled to the disruption's KL on neutral text with ``kl_match``
    (and the match's row), else matched in size."""
    if not kl_match:
        return replace(disruption, control=control), None
    found = neutral_kl_match(lm, disruption, control=control, seed=seed)
    return found.control, found.row()


def ablate(
    model: str | LoadedModel,
    task: str | Task,
    *,
    n: int = 100,
    disruption: Disruption | None = None,
    control: str = "matched",
    scorer: str = "strict",
    max_new_tokens: int = 16,
    seed: int = 0,
    batch_size: int = 16,
    task_params: dict | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = False,
    kl_match: bool = False,
) -> dict:
    """Baseline vs massive-disrupted vs control accuracy on one task (the ``ablate`` CLI).

    Args:
        model: A spec or a loaded model.
        task: Task name (see :mod:`massmech.causal.tasks.builtin`), built with ``task_params`` (e.g.
            ``{"filler_repeats": 2}`` for a shorter passkey).
        n: Examples (a task with fewer uses all it has; ``n_asked`` records what was asked).
        disruption: The massive disruption (default: lambda rule, pre-RoPE Q and K, all layers).
        control: Control kind (default ``"matched"``: random non-massive dims removing as much
            token variance as the massive dims, per head; see :mod:`massmech.causal.disruption`).
        scorer: How an exact answer is scored (:data:`~massmech.causal.vocabulary.SCORERS`:
            ``strict``, ``contains``: anywhere in ``max_new_tokens`` greedy tokens, the paper's code,
            ``first-line``, ``rank``: against the task's distractors); a choice task is scored by its options.
        max_new_tokens: Greedy tokens per example for the generating scorers.
        seed: Seed of the examples and of random controls.
        batch_size: Sequences per forward pass (results do not depend on it).
        out: Also write a run folder: ``ablate.json`` (this result), ``examples.parquet`` and
            ``.csv`` (one row per condition x example: ``condition, uid, group, correct, pred,
            n_dims, removed_variance, logprobs, margin, prompt, gold, source_id``: your row's id or place) and ``manifest.json``. It must be new, empty or (with ``overwrite``) a
            previous ablate run; checked before any work.
        overwrite: Replace a previous ablate run in ``out``.
        progress: Progress bar.
        kl_match: Match the control in effect, not only in size: scale it
            (:func:`massmech.causal.klmatch.kl_match`) until its next-token KL on neutral text
            (:func:`~massmech.causal.klmatch.neutral_kl_match`: BBC news windows, not the task)
            is within 10% of the disruption's; ``kl_match`` in the result has KL, removed variance
            and removed energy of both arms, the scale and whether the match was reached.

    Returns:
        ``{"baseline": {...}, "massive": {...}, "control": {...}, "model", "task", "condition",
        "control_kind", "protocol", "scorer", "chance", "evaluable", "n_asked", "first_prompt",
        "massive_vs_control", "separation"}`` (``first_prompt``: what the model read first;
        ``separation``: for two-option tasks, the AUROC of the log-probability margin per condition
        with its DeLong interval and, disrupted, DeLong's paired test against the baseline, a
        threshold-free measure next to accuracy; ``None`` for other tasks;
        ``massive_vs_control``: the exact McNemar test of the massive condition against the control
        on the same examples, ``b`` right under massive only, ``c`` under the control only, ``p_value``;
        ``evaluable``: the baseline is
        clearly above chance, :func:`massmech.stats.evaluable`; if not, the task cannot show an
        effect on this model); each of the three is ``accuracy, ci_low, ci_high`` (Wilson),
        ``n``, ``n_dims`` (replaced cells per example), ``removed_variance`` (share of token
        variance removed, see :class:`~massmech.causal.intervention.Intervention`) and
        ``p_value``: the exact McNemar test against the baseline (``None`` for the baseline),
        with ``b, c`` (discordant pairs) and the paired difference ``delta, delta_ci_low,
        delta_ci_high`` (Newcombe) for the disrupted ones.

    Raises:
        TaskError: Unknown task, or a missing data package.
        DisruptionError: A disruption the model cannot take (k > d_head, missing site, ...).
    """
    t = task if isinstance(task, Task) else get_task(task, **(task_params or {}))
    asked, n = n, min(n, t.max_n())  # a task with fewer examples uses all it has (as the ablation study does)
    examples = t.examples(n, seed)  # a task that cannot make them: error before loading anything
    disruption = disruption or Disruption(seed=seed)
    if control not in CONTROLS[1:]:
        raise DisruptionError(f"unknown control {control!r}; controls are {CONTROLS[1:]}")
    if kl_match and control not in (*MATCHED_CONTROLS, "random"):  # before loading anything
        raise DisruptionError(f"kl_match scales a variance-matched or the 'random' control, got {control!r}")
    if out is not None:
        check_out(out, "ablate", overwrite=overwrite)
    lm = load_model(model) if isinstance(model, str) else model
    disruption.validate(lm)
    ctrl, matched = _control(lm, disruption, control, kl_match, seed)
    conds = {BASELINE: None, "massive": disruption, "control": ctrl}
    torch.manual_seed(seed)
    df = score(lm, t, conds, scorer=scorer, max_new_tokens=max_new_tokens, n=n, seed=seed, batch_size=batch_size,
               progress=progress)
    s = summarize(df, seed=seed).set_index("condition")
    keep = ["accuracy", "ci_low", "ci_high", "n", "n_dims", "removed_variance", "p_value", "b", "c",
            "delta", "delta_ci_low", "delta_ci_high"]
    res = {name: {k: _plain(s.loc[name, k], k) for k in keep} for name in conds}
    for k in ("b", "c", "delta", "delta_ci_low", "delta_ci_high"):
        res[BASELINE].pop(k)
    res |= {
        "model": lm.info.name, "task": t.name, "task_config": t.config(), "kind": t.kind,
        "condition": disruption.label(), "control_kind": control, "seed": seed,
        "protocol": disruption.protocol(control) + (" (scaled to equal KL on neutral text)" if matched else ""),
        "scorer": str(df.scorer.iloc[0]), "kl_match": matched,
    }
    chance = t.chance(n, seed, scorer=scorer)
    base = df[df.condition == BASELINE].correct
    res |= {"chance": chance, "evaluable": evaluable(int(base.sum()), len(base), chance), "n_asked": asked,
            "first_prompt": read_text(lm, examples[0]), "massive_vs_control": _versus(df, "massive", "control")}
    by_uid = {e.uid: e for e in examples}
    res["separation"] = _separation(df, by_uid)
    own = t.source_ids()
    df = df.assign(prompt=df.uid.map(lambda u: read_text(lm, by_uid[u])), gold=df.uid.map(lambda u: _gold(by_uid[u])),
                   source_id=df.uid.map(lambda u: own.get(u, str(u))))
    if out is not None:
        config = {"model": lm.info.name, "task": t.name, "task_config": t.config(), "n": n, "n_asked": asked,
                  "first_prompt": res["first_prompt"], "seed": seed, "scorer": res["scorer"],
                  "max_new_tokens": max_new_tokens,
                  "disruption": disruption.to_dict(), "control": control, "batch_size": batch_size,
                  "control_disruption": ctrl.to_dict()}
        with atomic_run_dir(out, "ablate", overwrite=overwrite) as tmp:
            write_json(tmp / "ablate.json", res)
            df.to_parquet(tmp / "examples.parquet", index=False)
            df.to_csv(tmp / "examples.csv", index=False)
            write_json(tmp / "manifest.json", manifest(config, model_info=lm.info_dict(), seed=seed))
    return res
