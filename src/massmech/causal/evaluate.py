"""Scoring tasks under disruptions: teacher-forced exact match, multiple choice, generation.

* **Exact match** (greedy): the model's greedy continuation equals the gold answer tokens. This
  is decided in *one* teacher-forced forward pass over ``prompt + answer``: the verdict is true
  iff the argmax at every answer position equals the gold token (if all earlier argmaxes equal
  the gold tokens, greedy decoding would have fed exactly those tokens). The match is on
  tokens: an answer the model spells with other token boundaries counts as wrong (in both
  paths alike). :func:`generate_exact`
  is the token-by-token generation path (KV cache) kept to prove that both agree.
* **Multiple choice**: the option with the highest summed log-probability of its tokens.
* **Scorers** of exact-answer tasks (:data:`~massmech.causal.vocabulary.SCORERS`, :func:`score`):
  ``strict`` is the teacher-forced exact match above; ``contains`` generates greedily until the
  reply ends (EOS or end of turn, where the paper's ``generate`` stops) and asks whether the gold
  answer (stripped) appears anywhere in it, as the paper's code does with its generated text (``if label in answer``, ``run_experiment.py`` of
  MingyuJ666/Rope_with_LLM); ``first-line`` asks the same of its first line. A digit answer that
  tokenizes as ``' '``, ``'9'``, ... fails ``strict`` when the model answers ``" the 99139"``;
  the generating scorers see it. ``rank`` asks no generation: the gold answer is one option
  among the task's distractors (:meth:`~massmech.causal.tasks.base.Task.distractors`) and the
  example is scored as multiple choice (summed log-probability of each option's tokens; ``margin``
  is the gold's minus the best distractor's); chance is ``1 / (1 + distractors)``.

Several conditions (baseline, disruption, controls) are folded into one batch: each example is
repeated once per condition and an :class:`~massmech.causal.intervention.Intervention` applies each
row's own condition. Logits are computed only at the scored positions (the final hidden states
are gathered before the unembedding), so memory does not scale with ``pos x vocab``.

:func:`summarize` gives accuracy with its Wilson interval and, against the baseline, Newcombe's
paired interval and the exact McNemar test (:mod:`massmech.stats.paired`). :func:`~massmech.causal.perplexity.perplexity`
scores natural text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from massmech.causal.batch import batch_masks
from massmech.causal.choice import option_logprobs, ranked
from massmech.causal.disruption import Disruption
from massmech.causal.intervention import Intervention
from massmech.causal.tasks.base import Example, Task
from massmech.core.bridge import stop_ids
from massmech.core.models import LoadedModel, pad_batch
from massmech.core.qkvstats import QKVStats
from massmech.errors import TaskError
from massmech.stats import describe

BASELINE = "baseline"


@dataclass(frozen=True)
class _Row:
    """One sequence of a batch: an (example, condition[, option]) triple, tokenized."""

    ex: int  # index into the examples
    cond: int  # index into the conditions
    option: int  # option index (multiple choice) or -1
    ids: tuple[int, ...]
    n_prompt: int  # prompt tokens; the rest are scored


def encode(model: LoadedModel, ex: Example) -> tuple[list[int], list[list[int]]]:
    """Prompt ids (with the tokenizer's special tokens) and the ids of each scored continuation.

    An example with ``chat=True`` is asked as a user turn of the model's chat template (instruct
    models); without a template it is asked as plain text (its ``plain`` form when it has one).

    >>> import massmech as mm
    >>> encode(mm.load_model("tiny-llama"), Example(uid=0, prompt="2+2=", answer=" 4"))  # byte tokens, BOS 257
    ([257, 17, 10, 17, 28], [[220, 19]])
    """
    tails = [ex.answer] if not ex.options else list(ex.options)
    template = getattr(model.tokenizer, "chat_template", None)
    if ex.chat and template:
        text = model.tokenizer.apply_chat_template([{"role": "user", "content": ex.prompt}], add_generation_prompt=True,
                                                   tokenize=False)
        prompt = list(model.tokenizer(text, add_special_tokens=False).input_ids)  # the template has its own BOS
        tails = [t.lstrip() for t in tails]
    else:
        prompt = model.tokenize(ex.plain if ex.chat and ex.plain else ex.prompt)[0]
    if not all(tails):
        raise TaskError(f"example {ex.uid} has an empty answer/option")
    cont = [list(model.tokenizer(t, add_special_tokens=False).input_ids) for t in tails]
    if len(prompt) + max(map(len, cont)) > model.info.n_ctx:
        raise TaskError(
            f"example {ex.uid} has {len(prompt) + max(map(len, cont))} tokens, more than "
            f"{model.info.name}'s context of {model.info.n_ctx}: shorten the task"
        )
    return prompt, cont


def read_text(model: LoadedModel, ex: Example) -> str:
    r"""The prompt exactly as the model reads it (its chat template or plain form, special tokens included).

    >>> import massmech as mm
    >>> from massmech.causal.tasks.yesno import CapitalYesNo
    >>> read_text(mm.load_model("tiny-llama"), CapitalYesNo().examples(1)[0])  # no chat template: the cued form
    '<bos>Question: Is Zagreb the capital of The Netherlands? Answer Yes or No.\nAnswer:'
    """
    return model.tokenizer.decode(encode(model, ex)[0], skip_special_tokens=False)


def evaluate(
    model: LoadedModel,
    examples: Sequence[Example] | Task,
    conditions: Mapping[str, Disruption | None],
    *,
    scoring: str | None = None,
    n: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    calibration: QKVStats | None = None,
    fold: bool = True,
    share_prompt: bool = True,
    progress: bool = True,
) -> pd.DataFrame:
    """Score examples under each condition.

    Args:
        model: The model.
        examples: Examples, or a :class:`~massmech.causal.tasks.builtin.Task` (then ``n`` and ``seed`` apply).
        conditions: Name -> disruption; ``None`` is the undisturbed baseline.
        scoring: ``"exact"`` or ``"choice"``; defaults to the task's, or for bare examples to
            ``"choice"`` when they carry options. Examples that mix both are an error.
        batch_size: Sequences per forward pass (an example under C conditions with O options
            takes C x O sequences; with ``share_prompt``, C prompts per pass, then one pass of all
            their options, each row holding a copy of its prompt's KV cache: see
            :func:`~massmech.causal.choice.option_logprobs` on memory).
        calibration: Statistics for calibration-based disruptions.
        fold: Fold all conditions into shared batches (default). ``False`` runs each condition
            in its own passes (same results; for benchmarks).
        share_prompt: Choice scoring reads each (example, condition) prompt once and continues its
            KV cache with every option (:mod:`massmech.causal.choice`; same results) where every
            condition is ``kv_cache="prefill"`` and ``fold`` is on. ``False``: one sequence per option.
        progress: Progress bar over batches.

    Returns:
        Tidy table, one row per (condition, example): ``condition, uid, group, correct, pred,
        n_dims, removed_variance, logprobs, margin`` (``pred``: the argmax continuation at the
        answer positions, or the chosen option; ``n_dims``: (layer, head, dim) cells replaced for
        that example; ``removed_variance``: the share of the disrupted sites' token variance the
        replacement removed, see :class:`~massmech.causal.intervention.Intervention`; choice
        scoring only, else ``None``/NaN: ``logprobs``, each option's summed log-probability, and
        ``margin``, the gold option's minus the best other option's, a threshold-free score).

    Raises:
        NoOpDisruptionError: A disruption changed nothing for some example.
        ValueError: No conditions, an example longer than the model's context, or examples
            that do not fit the scoring.

    >>> import massmech as mm
    >>> from massmech.causal.tasks.builtin import get_task
    >>> conditions = {"baseline": None, "massive": Disruption(rule="topk", k=2)}
    >>> df = evaluate(mm.load_model("tiny-llama"), get_task("kv_lookup", n_pairs=2), conditions, n=4, progress=False)
    >>> df.groupby("condition", sort=False).n_dims.max().to_dict(), df.columns.tolist()
    ({'baseline': 0, 'massive': 24}, ['condition', 'uid', 'group', 'correct', 'pred', 'n_dims', 'removed_variance', 'logprobs', 'margin'])
    """
    examples, scoring = _resolve(examples, scoring, n, seed)
    if not conditions:
        raise TaskError("conditions is empty: pass at least {'baseline': None}")
    names = list(conditions)
    iv = Intervention(model, [conditions[k] for k in names], calibration=calibration)
    encoded = [encode(model, ex) for ex in examples]
    if fold and share_prompt and scoring == "choice" and all(c is None or c.kv_cache == "prefill" for c in conditions.values()):
        scores, dims = option_logprobs(model, iv, [c if conditions[k] is not None else -1 for c, k in enumerate(names)],
                                       [ex.uid for ex in examples], encoded, batch_size=batch_size, progress=progress)
        return _table(names, examples, scoring, scores, dims)
    rows = [
        _Row(i, c, o if scoring == "choice" else -1, tuple(p + cont), len(p))
        for c in range(len(names))
        for i, (p, conts) in enumerate(encoded)
        for o, cont in enumerate(conts)
    ]
    by_length = sorted(range(len(rows)), key=lambda j: -len(rows[j].ids))
    groups = [by_length] if fold else [[j for j in by_length if rows[j].cond == c] for c in range(len(names))]
    batches = [g[i : i + batch_size] for g in groups for i in range(0, len(g), batch_size)]
    device = model.device
    scores: dict[tuple[int, int], list] = {}  # (ex, cond) -> per option score / (ok, pred)
    dims: dict[tuple[int, int], tuple[int, float]] = {}
    with torch.inference_mode(), iv.active():
        for batch in tqdm(batches, desc="evaluate", unit="batch", disable=not progress):
            brows = [rows[j] for j in batch]
            ids, full = pad_batch([r.ids for r in brows], model.pad_id)
            prompt = full.clone()
            for k, r in enumerate(brows):
                prompt[k, r.n_prompt :] = False
            iv.set_batch(
                torch.tensor([r.cond if conditions[names[r.cond]] is not None else -1 for r in brows]),
                prompt, full, row_ids=torch.tensor([examples[r.ex].uid for r in brows]),
            )
            # scored positions: the logits at t predict token t + 1
            where = torch.tensor([(k, t) for k, r in enumerate(brows) for t in range(r.n_prompt - 1, len(r.ids) - 1)])
            with batch_masks(full.to(device), prompt.to(device)):
                logits = model.final_logits(ids.to(device), full.long().to(device), where[:, 0], where[:, 1])
            if iv.passes != 1:
                raise RuntimeError(f"the intervention's end-of-forward hook fired {iv.passes} times, not once")
            at = 0
            for k, r in enumerate(brows):
                m = len(r.ids) - r.n_prompt
                lg, gold = logits[at : at + m], torch.tensor(r.ids[r.n_prompt :], device=logits.device)
                at += m
                dims[(r.ex, r.cond)] = (int(iv.last_selected[k]), float(iv.last_removed[k]))
                if scoring == "exact":
                    arg = lg.argmax(-1)
                    scores[(r.ex, r.cond)] = [bool((arg == gold).all()), model.tokenizer.decode(arg.tolist())]
                else:
                    lp = torch.log_softmax(lg, -1).gather(-1, gold[:, None]).sum().item()
                    scores.setdefault((r.ex, r.cond), [None] * len(examples[r.ex].options))[r.option] = lp
    return _table(names, examples, scoring, scores, dims)


def _table(names: list[str], examples: list[Example], scoring: str, scores: dict, dims: dict) -> pd.DataFrame:
    return pd.DataFrame([_row(name, ex, scoring, scores[(i, c)], dims[(i, c)])
                         for c, name in enumerate(names) for i, ex in enumerate(examples)])


def _row(condition: str, ex: Example, scoring: str, scored: list, dims: tuple[int, float]) -> dict:
    """One row of :func:`evaluate`'s table: the verdict, what the model chose, and for choice
    scoring each option's log-probability and the gold option's margin over the best other."""
    logprobs, margin = None, float("nan")
    if scoring == "exact":
        correct, pred = scored
    else:
        choice = int(np.argmax(scored))
        correct, pred = choice == ex.label, ex.options[choice].strip()
        logprobs = [float(v) for v in scored]
        margin = logprobs[ex.label] - max(v for o, v in enumerate(logprobs) if o != ex.label)
    return {"condition": condition, "uid": ex.uid, "group": ex.group, "correct": bool(correct), "pred": pred,
            "n_dims": dims[0], "removed_variance": dims[1], "logprobs": logprobs, "margin": margin}


def generate_exact(
    model: LoadedModel,
    examples: Sequence[Example] | Task,
    conditions: Mapping[str, Disruption | None],
    *,
    n: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    calibration: QKVStats | None = None,
    match: str = "exact",
    progress: bool = True,
) -> pd.DataFrame:
    """Exact match by greedy generation with a KV cache (the slow reference path), or a
    generating scorer.

    Prompts are left-padded; each row's disruption acts on the prompt during prefill and, under
    ``kv_cache="every_step"``, on every generated token. ``match="exact"`` compares the first
    ``len(answer)`` generated tokens with the gold tokens; ``"contains"`` asks whether the gold
    answer's text (stripped) appears in the decoded continuation, ``"first-line"`` in its first line.

    Args:
        max_new_tokens: Tokens to generate per batch; default: the longest gold answer in it.
        match: ``exact``, ``contains`` or ``first-line`` (see the module docstring).

    Returns:
        The same table as :func:`evaluate` (``pred``: the decoded generated answer tokens).

    >>> import massmech as mm
    >>> from massmech.causal.tasks.builtin import get_task
    >>> model, task = mm.load_model("tiny-llama"), get_task("kv_lookup", n_pairs=2)
    >>> conditions = {"baseline": None, "massive": Disruption(rule="topk", k=2)}
    >>> generated = generate_exact(model, task, conditions, n=2, progress=False)
    >>> forced = evaluate(model, task, conditions, n=2, progress=False)
    >>> len(generated), bool((generated.correct == forced.correct).all())  # the two paths agree
    (4, True)
    """
    if match not in ("exact", "contains", "first-line"):
        raise TaskError(f"match must be 'exact', 'contains' or 'first-line', got {match!r}")
    examples, scoring = _resolve(examples, "exact", n, seed)
    names = list(conditions)
    iv = Intervention(model, [conditions[k] for k in names], calibration=calibration)
    encoded = [encode(model, ex) for ex in examples]
    units = [(i, c) for c in range(len(names)) for i in range(len(examples))]
    units.sort(key=lambda u: -len(encoded[u[0]][0]))
    device, stops = model.device, set(stop_ids(model.bridge, model.tokenizer))
    out = []
    with torch.inference_mode(), iv.active():
        for s in tqdm(range(0, len(units), batch_size), desc="generate", disable=not progress):
            batch = units[s : s + batch_size]
            prompts = [encoded[i][0] for i, _ in batch]
            golds = [encoded[i][1][0] for i, _ in batch]
            ids, mask = pad_batch(prompts, model.pad_id, left=True)
            iv.set_batch(
                torch.tensor([c if conditions[names[c]] is not None else -1 for _, c in batch]),
                mask, row_ids=torch.tensor([examples[i].uid for i, _ in batch]),
            )
            new = max_new_tokens or max(map(len, golds))
            with batch_masks(mask.to(device)):  # the prefill; decode steps are one token
                gen = model.generate(ids.to(device), mask.to(device), new).cpu()
            for k, (i, c) in enumerate(batch):
                if match == "exact":
                    g = gen[k, : len(golds[k])].tolist()
                    pred, correct = model.tokenizer.decode(g), g == golds[k]
                else:  # the reply ends at its first EOS / end of turn, where the paper's generate() stops
                    row = gen[k].tolist()
                    pred = model.tokenizer.decode(row[: next((j for j, t in enumerate(row) if t in stops), len(row))],
                                                  skip_special_tokens=True)
                    correct = holds(examples[i].answer, pred, match)
                out.append(
                    {"condition": names[c], "uid": examples[i].uid, "group": examples[i].group,
                     "correct": correct, "pred": pred, "n_dims": int(iv.prompt_selected[k]),
                     "removed_variance": float(iv.last_removed[k]), "logprobs": None, "margin": float("nan")}
                )
    order = {name: j for j, name in enumerate(names)}
    uid_pos = {ex.uid: j for j, ex in enumerate(examples)}
    df = pd.DataFrame(out)
    return df.sort_values(by=["condition", "uid"], key=lambda s: s.map(order) if s.name == "condition" else s.map(uid_pos)).reset_index(drop=True)


def score(
    model: LoadedModel, task: Task, conditions: Mapping[str, Disruption | None], *, scorer: str = "strict",
    max_new_tokens: int = 16, n: int | None = None, seed: int = 0, batch_size: int = 16,
    calibration: QKVStats | None = None, share_prompt: bool = True, progress: bool = True,
) -> pd.DataFrame:
    """Score a task under each condition with a named scorer (the module docstring lists them).

    ``strict`` is :func:`evaluate`; ``contains`` and ``first-line`` generate ``max_new_tokens``
    greedy tokens per example (:func:`generate_exact`); ``rank`` scores the gold answer against
    the task's distractors as multiple choice (:func:`~massmech.causal.choice.ranked`). A choice task is always scored by
    its options (a scorer of exact answers does not apply); the table's ``scorer`` column says
    which scorer each row used.

    Raises:
        TaskError: An unknown scorer, or ``rank`` on a task without distractors (before any compute).

    >>> import massmech as mm
    >>> from massmech.causal.tasks.builtin import get_task
    >>> model, task = mm.load_model("tiny-llama"), get_task("kv_lookup", n_pairs=2)
    >>> df = score(model, task, {"baseline": None}, scorer="contains", max_new_tokens=4, n=2, progress=False)
    >>> df.scorer.unique().tolist(), len(df)
    (['contains'], 2)
    """
    from massmech.causal.vocabulary import SCORERS

    if scorer not in SCORERS:
        raise TaskError(f"unknown scorer {scorer!r}; scorers are {', '.join(SCORERS)}")
    if task.scoring == "choice" or scorer == "strict":
        df = evaluate(model, task, conditions, n=n, seed=seed, batch_size=batch_size, calibration=calibration,
                      share_prompt=share_prompt, progress=progress)
        return df.assign(scorer="choice" if task.scoring == "choice" else "strict")
    if scorer == "rank":
        examples = ranked(task, task.examples(n if n is not None else task.max_n(), seed))
        df = evaluate(model, examples, conditions, scoring="choice", batch_size=batch_size, calibration=calibration,
                      share_prompt=share_prompt, progress=progress)
        return df.assign(scorer="rank")
    df = generate_exact(model, task, conditions, n=n, seed=seed, batch_size=batch_size, calibration=calibration,
                        max_new_tokens=max_new_tokens, match=scorer, progress=progress)
    return df.assign(scorer=scorer)


def holds(answer: str, reply: str, scorer: str) -> bool:
    r"""Whether a generated ``reply`` holds the gold ``answer`` (stripped) under a generating scorer:
    anywhere in it (``contains``) or in its first line (``first-line``).

    >>> holds(" 99139", " the 99139.", "contains"), holds(" 909", " 867.\nThe number of pebble is 909.", "first-line")
    (True, False)
    """
    if scorer not in ("contains", "first-line"):
        raise TaskError(f"holds() reads replies of the generating scorers contains and first-line, not {scorer!r}")
    return answer.strip() in (reply.lstrip().split("\n", 1)[0] if scorer == "first-line" else reply)


def rescore(df: pd.DataFrame, examples: Sequence[Example] | Task, scorer: str, *, n: int | None = None,
            seed: int = 0) -> pd.DataFrame:
    """A ``contains`` table (:func:`score`) scored again from its stored replies (``pred``), no compute:
    ``first-line`` reads each reply to its first line, so an answer recited after a wrong one does not count.

    >>> import massmech as mm
    >>> from massmech.causal.tasks.builtin import get_task
    >>> model, task = mm.load_model("tiny-llama"), get_task("kv_lookup", n_pairs=2)
    >>> df = score(model, task, {"baseline": None}, scorer="contains", max_new_tokens=4, n=2, progress=False)
    >>> rescore(df, task, "first-line", n=2).scorer.unique().tolist()
    ['first-line']
    """
    if set(df.get("scorer", pd.Series(["contains"]))) != {"contains"} or scorer != "first-line":
        raise TaskError(f"rescore reads contains replies as first-line, got {sorted(set(df.get('scorer', [])))} -> {scorer!r}")
    examples, _ = _resolve(examples, "exact", n, seed)
    gold = {ex.uid: ex.answer for ex in examples}
    if set(df.uid) - set(gold):
        raise TaskError(f"rescore: uids {sorted(set(df.uid) - set(gold))[:5]} are not among the examples")
    return df.assign(correct=[holds(gold[u], p, scorer) for u, p in zip(df.uid, df.pred, strict=True)], scorer=scorer)


def _resolve(examples, scoring, n, seed) -> tuple[list[Example], str]:
    if isinstance(examples, Task):
        task = examples
        examples = task.examples(n if n is not None else task.max_n(), seed)
        scoring = scoring or task.scoring
    else:
        examples = list(examples)
        if not examples:
            raise TaskError("no examples")
        if scoring is None:
            scoring = "choice" if examples[0].options else "exact"
    if scoring not in ("exact", "choice"):
        raise TaskError(f"scoring must be 'exact' or 'choice', got {scoring!r}")
    if any(bool(ex.options) != (scoring == "choice") for ex in examples):
        raise TaskError(f"scoring={scoring!r} needs {'options' if scoring == 'choice' else 'answers'} on every example")
    return examples, scoring


# ------------------------------------------------------------------------ statistics
def summarize(df: pd.DataFrame, *, baseline: str = BASELINE, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Accuracy per condition with a 95% interval, plus the paired difference to ``baseline`` and its test.

    Intervals and tests are those of :func:`massmech.stats.describe` (Wilson, Newcombe, exact
    McNemar for 0/1 verdicts).

    Returns:
        One row per condition: ``condition, accuracy, ci_low, ci_high, n, n_dims,
        removed_variance`` and, when the baseline is present, ``delta, delta_ci_low,
        delta_ci_high, b, c, p_value`` (paired over uids; ``None`` for the baseline itself).

    >>> df = pd.DataFrame({"condition": ["baseline"] * 4 + ["massive"] * 4, "uid": [0, 1, 2, 3] * 2,
    ...                    "correct": [1, 1, 1, 0, 0, 1, 0, 0], "n_dims": [0] * 4 + [6] * 4})
    >>> summarize(df)[["condition", "accuracy", "n", "n_dims", "delta", "b", "c", "p_value"]]
      condition  accuracy  n  n_dims  delta    b    c  p_value
    0  baseline      0.75  4     0.0    NaN  NaN  NaN      NaN
    1   massive      0.25  4     6.0   -0.5  0.0  2.0      0.5
    """
    rows = []
    base = df[df.condition == baseline].set_index("uid").correct if baseline in set(df.condition) else None
    for name, g in df.groupby("condition", sort=False):
        paired = None if base is None else base.reindex(g.uid).to_numpy(float)
        if name == baseline:
            paired = None
        stats = describe(g.correct.to_numpy(float), baseline=paired, n_boot=n_boot, seed=seed)
        removed = g["removed_variance"] if "removed_variance" in g else pd.Series(dtype=float)
        rows.append({"condition": name, "accuracy": stats.pop("mean"), **stats, "n_dims": float(g.n_dims.mean()),
                     "removed_variance": float(removed.mean()) if len(removed) else float("nan")})
    return pd.DataFrame(rows)
