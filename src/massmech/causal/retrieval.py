"""Which RoPE bands carry retrieval and the attention sink: logit advantages on task prompts.

At the last prompt position (the query that predicts the answer), each head's attention logit to
a key is a sum over RoPE pairs (:mod:`massmech.core.attribution`). Two *edges* per example:

* ``needle``: the mean logit to the prompt tokens that spell the gold answer (where it stands in
  the prompt: the pass key, the looked-up value), minus the mean logit to the other tokens after
  the first. The part each pair group carries says which bands do the content match.
* ``sink``: the logit to the first token minus the mean logit to every other token.

Each advantage is split by group in two ways (``grouping``): by **band** (``low``/``mid``/``high``
of :func:`~massmech.core.frequency.context_bands` at the prompt's length, ``unrotated`` for
partial rotary) and by **massive** (pairs holding a massive Q or K dim of that head on this
prompt, by the lambda rule on post-RoPE norms, which RoPE leaves as they were pre-RoPE, vs the
rest). Within a grouping the groups sum to the edge's total advantage (``group="total"``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from massmech.causal.evaluate import encode
from massmech.causal.selection import pair_units, to_units
from massmech.causal.tasks.base import Example, Task
from massmech.core.attribution import UNROTATED, PairLogits, group_logits, query_logits
from massmech.core.detect import massive_mask
from massmech.core.frequency import context_bands
from massmech.core.models import LoadedModel

EDGES = ("needle", "sink")
GROUPINGS = ("band", "massive")


def needle_positions(model: LoadedModel, ex: Example, prompt: Sequence[int]) -> list[int]:
    """Positions of the prompt tokens that spell the gold answer (every occurrence; whitespace-only
    tokens of the answer, such as a bare leading space, left out).

    >>> import massmech as mm
    >>> model = mm.load_model("tiny-llama")  # byte tokens: BOS, then one per character
    >>> ex = Example(uid=0, prompt="key 42, key 7: 42", answer=" 42")
    >>> needle_positions(model, ex, encode(model, ex)[0])
    [5, 6, 16, 17]
    """
    ids = [t for t in model.tokenizer(ex.answer, add_special_tokens=False).input_ids
           if model.tokenizer.decode([t]).strip()]
    if not ids:
        return []
    found = []
    for start in range(1, len(prompt) - len(ids) + 1):
        if list(prompt[start : start + len(ids)]) == ids:
            found += range(start, start + len(ids))
    return sorted(set(found))


def _massive_pairs(q: torch.Tensor, k: torch.Tensor, model: LoadedModel, lam: float) -> torch.Tensor:
    """``[head, n_pairs]`` bool: pairs with a massive Q or K dim (lambda rule on the prompt's M)."""
    m_q = q.float().pow(2).sum(0).sqrt()  # [head, d]
    m_k = k.float().pow(2).sum(0).sqrt().repeat_interleave(m_q.shape[0] // k.shape[1], dim=0)
    hit = massive_mask(m_q, rule="lambda", lam=lam) | massive_mask(m_k, rule="lambda", lam=lam)
    unit, _ = pair_units(torch.as_tensor(model.rope.dim_to_pair()))  # the pairs first, then unrotated dims
    return to_units(hit[None], unit)[0, :, : model.rope.n_pairs] > 0


def _advantages(parts: torch.Tensor, needle: list[int]) -> dict[str, torch.Tensor]:
    """Per edge, ``[head, ...]`` advantage of the contributions ``parts`` (``[head, keys, ...]``)."""
    keys = parts.shape[1]
    rest = torch.ones(keys, dtype=torch.bool)
    rest[0] = False
    out = {"sink": parts[:, 0] - parts[:, 1:].mean(1)}
    if needle:
        rest[needle] = False
        if rest.any():
            out["needle"] = parts[:, needle].mean(1) - parts[:, rest].mean(1)
    return out


def _rows(pl: PairLogits, massive: torch.Tensor, bands: np.ndarray, needle: list[int], uid: int) -> list[dict]:
    c = pl.contributions[0, :, 0]  # [head, keys, part]
    groups = {"band": group_logits(pl, bands), "massive": {}}
    n_pairs = pl.n_pairs
    mass = massive.float()[:, None, :]  # [head, 1, pair]
    groups["massive"] = {"massive": (c[..., :n_pairs] * mass).sum(-1)[None, :, None],
                         "other": (c[..., :n_pairs] * (1 - mass)).sum(-1)[None, :, None]}
    if pl.has_unrotated:
        groups["massive"][UNROTATED] = c[..., -1][None, :, None]
    heads = c.shape[0]
    pairs = {"band": {name: [int((bands == name).sum())] * heads for name in groups["band"]},
             "massive": {"massive": massive.sum(-1).tolist(), "other": (n_pairs - massive.sum(-1)).tolist()}}
    rows = []
    total = _advantages(c.sum(-1), needle)
    for grouping, by in groups.items():
        for name, logits in by.items():
            n = pairs[grouping].get(name, [0] * heads)  # the unrotated dims are no pair
            for edge, adv in _advantages(logits[0, :, 0], needle).items():
                rows += [{"uid": uid, "layer": pl.layer, "head": h, "edge": edge, "grouping": grouping, "group": name,
                          "pairs": int(n[h]), "advantage": float(adv[h]), "total": float(total[edge][h])}
                         for h in range(heads)]
    return rows


def edge_attribution(model: LoadedModel, task: Task, *, n: int = 20, seed: int = 0, layers: Sequence[int] | None = None,
                     lam: float = 5.0, progress: bool = False) -> pd.DataFrame:
    """The needle and sink advantages of ``task``'s first ``n`` examples, by pair group (see the module).

    Returns:
        One row per ``(uid, layer, head, edge, grouping, group)``: ``pairs`` (RoPE pairs in the
        group, the base rate of its share), ``advantage`` (logit units, the group's part) and
        ``total`` (the edge's whole advantage in that head); an example whose answer does not
        appear in its prompt has ``sink`` rows only.

    >>> import massmech as mm
    >>> from massmech.causal.tasks.builtin import get_task
    >>> df = edge_attribution(mm.load_model("tiny-llama"), get_task("passkey"), n=2, layers=[0])
    >>> sorted(df.edge.unique()), sorted(df[df.grouping == "band"].group.unique())
    (['needle', 'sink'], ['high', 'low', 'mid'])
    >>> by = df.groupby(["uid", "head", "edge", "grouping"])
    >>> bool(((by.advantage.sum() - by.total.first()).abs() < 1e-4).all())  # the groups sum to the edge
    True
    """
    layers = list(range(model.info.n_layers)) if layers is None else list(layers)
    rows = []
    for ex in tqdm(task.examples(n, seed), desc="attribute", disable=not progress):
        prompt = encode(model, ex)[0]
        needle = needle_positions(model, ex, prompt)
        query = len(prompt) - 1
        qk: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for layer, pl in query_logits(model, torch.tensor([prompt]), query, layers, keep=qk).items():
            massive = _massive_pairs(*qk[layer], model, lam)
            bands = context_bands(model.rope, layer, len(prompt))
            rows += _rows(pl, massive, bands, [p for p in needle if p < query], ex.uid)
    return pd.DataFrame(rows)


def summarize_edges(df: pd.DataFrame) -> pd.DataFrame:
    """Per ``(edge, grouping, group, layer)``: the mean advantage over examples and heads, the
    group's share of the mean total (its part of the edge, pooled over heads), and the mean number
    of pairs in the group.

    >>> df = pd.DataFrame({"uid": 0, "layer": 0, "head": [0, 1], "edge": "sink", "grouping": "band", "group": "low",
    ...                    "pairs": 4, "advantage": [1.0, 3.0], "total": [2.0, 4.0]})
    >>> summarize_edges(df)[["advantage", "share"]].values.tolist()
    [[2.0, 0.6666666666666666]]
    """
    g = df.groupby(["edge", "grouping", "group", "layer"], sort=False)
    out = g.agg(advantage=("advantage", "mean"), total=("total", "mean"), pairs=("pairs", "mean"),
                n=("uid", "nunique")).reset_index()
    out["share"] = out.advantage / out.total.where(out.total != 0)
    return out


def rank_heads(model: LoadedModel, task: Task, *, n: int = 20, seed: int = 1, lam: float = 5.0,
               progress: bool = False) -> pd.DataFrame:
    """Heads ranked by the needle advantage their massive pairs carry (see :func:`edge_attribution`).

    Args:
        model: The model.
        task: A task whose answer stands in its prompt (passkey, kv_lookup).
        n: Examples the ranking is made on.
        seed: Their seed (keep them apart from the examples the heads are tested on).
        lam: Lambda of the massive rule, for the massive pairs and for ``q_massive``.

    Returns:
        One row per ``(layer, head)``: ``score`` (the massive pairs' needle advantage, mean over the
        examples, logit units), ``total`` (the whole needle advantage), ``q_massive`` (the share of
        the examples whose prompt gives the head a λ-massive Q dim before RoPE: what a Q disruption
        can replace there), ``eligible`` (``q_massive >= 0.5``) and ``rank`` (1 = the largest score
        among the eligible heads; 0 for the others).

    >>> import massmech as mm
    >>> from massmech.causal.tasks.builtin import get_task
    >>> r = rank_heads(mm.load_model("tiny-llama"), get_task("passkey"), n=2, lam=1.5)
    >>> len(r), r.columns.tolist()  # 2 layers x 4 heads
    (8, ['layer', 'head', 'score', 'total', 'q_massive', 'eligible', 'rank'])
    """
    df = edge_attribution(model, task, n=n, seed=seed, lam=lam, progress=progress)
    needle = df[(df.edge == "needle") & (df.grouping == "massive") & (df.group == "massive")]
    if needle.empty:
        raise ValueError(f"{task.name}: no example's answer stands in its prompt: nothing to rank heads by")
    out = needle.groupby(["layer", "head"]).agg(score=("advantage", "mean"), total=("total", "mean")).reset_index()
    hits = torch.zeros(model.info.n_layers, model.info.n_heads)
    for ex in task.examples(n, seed):
        acts = model.run_sites(torch.tensor([encode(model, ex)[0]]), [("q", "pre")])
        for (_, _, layer), x in acts.items():
            m = x[0].pow(2).sum(0).sqrt()  # [head, d]: the prompt's M
            hits[layer] += massive_mask(m, rule="lambda", lam=lam).any(-1).float()
    out["q_massive"] = [float(hits[la, h]) / n for la, h in zip(out["layer"], out["head"], strict=True)]
    out["eligible"] = out.q_massive >= 0.5
    order = out[out.eligible].score.rank(ascending=False, method="first")
    out["rank"] = order.reindex(out.index).fillna(0).astype(int)
    return out
