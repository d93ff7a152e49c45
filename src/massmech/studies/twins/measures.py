"""What the twins study measures, per checkpoint: statistics tables, scores, the disruption.

:func:`checkpoint_tables` gives, per (site, layer), the per-head ratios, massive dims, slow-half
energy and peak pairs of Q, K, V (:func:`stats_tables`), plus loss and in-context accuracy
(:func:`score`, :func:`row_values`); :func:`disruption_table` the RoPE twin's scores with its top-k
Q/K dims replaced and with a random control; :func:`wavelength_table` and :func:`summary_ratios`
condense them. :mod:`massmech.studies.twins.study` runs them as cells.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Int
from torch import Tensor

from massmech.causal.disruption import Disruption
from massmech.causal.intervention import Intervention
from massmech.core.capture import capture_stats
from massmech.core.decoder import lm_logits
from massmech.core.detect import massive_mask
from massmech.core.frequency import pair_energy
from massmech.core.models import LoadedModel, wrap
from massmech.core.qkvstats import QKVStats
from massmech.core.rope import RopeSpec
from massmech.core.twin import TwinLlamaForCausalLM, load_twin
from massmech.files.io import sha256_file
from massmech.stats import describe, token_nll
from massmech.studies.twins.config import TWINS, TwinsConfig, Variant
from massmech.studies.twins.data import KINDS, TwinCorpus, eval_set

SITES = ("q", "k", "v")


def wrap_twin(model: TwinLlamaForCausalLM, tokenizer, name: str) -> LoadedModel:
    """A twin as a :class:`~massmech.core.models.LoadedModel` (bridged as Llama)."""
    return wrap(model.eval(), tokenizer, name=name)


# --------------------------------------------------------------------------- statistics
def stats_tables(stats: QKVStats, spec: RopeSpec, *, lam: float, context: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-(site, layer) concentration metrics and per-(site, layer, pair) energy shares.

    Args:
        stats: Pre-RoPE statistics of one checkpoint.
        spec: RoPE spec whose pairs index the dims (the variant's own, or the RoPE twin's for the
            twins without rotation, which share its layout).
        lam: Lambda of the massive rule (per-head mean).
        context: Training context (wavelengths are reported relative to it).
    """
    layer_rows = []
    pairs = pair_energy(dataclasses.replace(stats, rope=spec))
    pairs = pairs[pairs.stage == "pre"]
    prof = pairs.groupby(["site", "layer", "pair"], as_index=False).agg(share=("share", "mean"), wavelength=("wavelength", "first"))
    half = spec.n_pairs // 2
    for site in SITES:
        m = stats.norm(site, "pre")  # [layer, head, d_head]
        ratio = m.max(-1).values / m.mean(-1)  # [layer, head]
        n_massive = massive_mask(m, lam=lam).sum((-2, -1))  # [layer]
        for li, layer in enumerate(stats.layers):
            p = prof[(prof.site == site) & (prof.layer == layer)]
            peak = p.loc[p.share.idxmax()]
            log_rel = np.log(p.wavelength.to_numpy() / context)
            centroid = float(np.exp((p.share.to_numpy() * log_rel).sum() / p.share.sum()))
            layer_rows.append({
                "site": site,
                "layer": layer,
                "max_ratio": float(ratio[li].max()),
                "mean_ratio": float(ratio[li].mean()),
                "n_massive": int(n_massive[li]),
                "slow_half_share": float(p.share[p.pair >= half].sum() / p.share.sum()),
                "peak_pair": int(peak.pair),
                "peak_wavelength_over_context": float(peak.wavelength) / context,
                "centroid_wavelength_over_context": centroid,  # energy-weighted geometric mean
            })
    return pd.DataFrame(layer_rows), prof.rename(columns={"share": "energy_share"})


def _scored(logits: Tensor, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per row: mean NLL and accuracy (greedy == target) over the scored tokens."""
    # logits [b, pos, vocab] predicts tokens[:, 1:]
    target, m = tokens[:, 1:], mask[:, 1:].float()
    nll = token_nll(logits, tokens)  # [b, pos-1], fp32
    right = (logits[:, :-1].argmax(-1) == target).float()
    n = m.sum(1).clamp_min(1)
    return (nll * m).sum(1) / n, (right * m).sum(1) / n


def prompt_mask(name: str, mask: Bool[Tensor, "n pos"]) -> Bool[Tensor, "n pos"]:
    """The positions before each row's first scored token (its prompt); natural text is all prompt.

    >>> prompt_mask("copy", torch.tensor([[False, False, True, True]])).tolist()
    [[True, True, False, False]]
    """
    if name == "natural":
        return torch.ones_like(mask)
    first = mask.float().argmax(1, keepdim=True)  # [n, 1]
    return torch.arange(mask.shape[1]).view(1, -1) < first


def row_values(
    forward: Callable[..., Tensor],
    sets: dict[str, tuple[Int[Tensor, "n pos"], Bool[Tensor, "n pos"]]],
    *,
    batch_size: int = 16,
) -> dict[str, np.ndarray]:
    """Per evaluation row: natural-text loss (``"natural_loss"``) or in-context accuracy
    (``"<kind>_accuracy"``), in the order of the rows.

    Args:
        forward: ``forward(tokens, prompt, rows)``: token ids ``[batch, pos]``, the batch's prompt
            mask (:func:`prompt_mask`) and stable row ids -> logits ``[batch, pos, vocab]``.
        sets: Name -> (tokens, scored mask); ``"natural"`` is scored by loss, the rest by accuracy.
    """
    out = {}
    with torch.inference_mode():
        for k, (name, (toks, mask)) in enumerate(sets.items()):
            prompt = prompt_mask(name, mask)
            vals = []
            for i in range(0, len(toks), batch_size):
                rows = torch.arange(i, min(i + batch_size, len(toks))) + 1_000_000 * k  # one id per example
                logits = forward(toks[i : i + batch_size], prompt[i : i + batch_size], rows)  # on the model's device
                t, m = toks[i : i + batch_size].to(logits.device), mask[i : i + batch_size].to(logits.device)
                nll, acc = _scored(logits, t, m)
                vals.append((nll if name == "natural" else acc).cpu())
            out["natural_loss" if name == "natural" else f"{name}_accuracy"] = torch.cat(vals).double().numpy()
    return out


def score(
    values: dict[str, np.ndarray], *, baseline: dict[str, np.ndarray] | None = None, seed: int = 0
) -> pd.DataFrame:
    """Mean of each metric with a 95% bootstrap CI over rows (and, given the same rows under a
    baseline, the paired change with its CI).

    Returns:
        One row per metric: ``metric, value, ci_low, ci_high, n`` (+ ``delta, delta_ci_low,
        delta_ci_high``).
    """
    rows = []
    for metric, v in values.items():
        stats = describe(v, baseline=None if baseline is None else baseline[metric], seed=seed)
        rows.append({"metric": metric, "value": stats.pop("mean"), **stats})
    return pd.DataFrame(rows)


def eval_sets(cfg: TwinsConfig, corpus: TwinCorpus, context: int) -> dict[str, tuple[Tensor, Tensor]]:
    """Held-out natural windows and in-context sequences at ``context`` tokens."""
    n_nat = max(1, cfg.analysis_tokens // context)
    sets = {"natural": eval_set(corpus, "natural", n=n_nat, length=context, seed=cfg.seed)}
    for kind in KINDS:
        sets[kind] = eval_set(corpus, kind, n=cfg.eval_examples, length=context, seed=cfg.seed)
    return sets


def _hf_forward(model: TwinLlamaForCausalLM) -> Callable[..., Tensor]:
    return lambda x, prompt, rows: lm_logits(model, x)


def _bridge_forward(lm: LoadedModel, iv: Intervention | None = None) -> Callable[..., Tensor]:
    """Logits through the bridge; with ``iv``, each batch's prompt and row ids are set first."""
    def forward(x: Tensor, prompt: Tensor, rows: Tensor) -> Tensor:
        if iv is not None:
            iv.set_batch(torch.zeros(len(x), dtype=torch.long), prompt, torch.ones_like(prompt), row_ids=rows)
        return lm.logits(x.to(lm.device))

    return forward


# --------------------------------------------------------------------------- tables
def checkpoint_id(folder: Path) -> str:
    """sha256 of a checkpoint's weights: a retrained checkpoint at the same step is another cell."""
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")):
        sha256_file(f, h)
    return h.hexdigest()[:20]


def analyse_checkpoint(cfg: TwinsConfig, v: Variant, step: int, folder: Path, tokenizer, sets: dict,
                        spec_of_twin, device: str) -> dict[str, pd.DataFrame]:
    """Trajectory, band and score rows of one checkpoint (one cell of the twins study)."""
    ctx = cfg.context_of(v)
    model = load_twin(folder).to(device).eval()
    lm = wrap_twin(model, tokenizer, f"twin-{v.name}@{step}")
    stats = capture_stats(lm, sets["natural"][0], sites=SITES, stages=("pre",), batch_size=8, progress=False)
    # non-RoPE twins are indexed by the RoPE twin's pairs, so their bands line up with it
    spec = lm.rope_or_none or spec_of_twin()
    lt, pt = stats_tables(stats, spec, lam=cfg.lam, context=ctx)
    keys = {"variant": v.name, "mechanism": v.mechanism, "context": ctx,
            "rope_theta": cfg.theta_of(v) if v.mechanism == "rope" else np.nan, "step": step}
    if lm.rope_or_none is None:
        pt = pt.assign(wavelength=np.nan)
        lt = lt.assign(peak_wavelength_over_context=np.nan, centroid_wavelength_over_context=np.nan)
    return {"trajectory": lt.assign(**keys), "bands": pt.assign(**keys),
            "scores": score(row_values(_hf_forward(model), sets), seed=cfg.seed).assign(**keys)}


def disruption_table(cfg: TwinsConfig, lm: LoadedModel, corpus: TwinCorpus) -> pd.DataFrame:
    """Baseline vs top-k Q/K dims per head (pre-RoPE, every layer, chosen per sequence from its
    prompt: the tokens before the first scored one) replaced by their prompt mean at the prompt's
    positions (``kv_cache="prefill"``), vs random other dims per head drawn per example, matched in
    removed variance (and the count-matched random control); paired changes with CIs."""
    sets = eval_sets(cfg, corpus, cfg.context)
    massive = Disruption(target="qk", stage="pre", rule="topk", k=cfg.disrupt_k, seed=cfg.seed)
    base = row_values(_bridge_forward(lm), sets)
    frames = [score(base, seed=cfg.seed).assign(condition="baseline")]
    for name, d in (("massive", massive), ("matched", massive.as_control("matched")),
                    ("random", massive.as_control("random"))):
        iv = Intervention(lm, [d])
        with iv.active():
            vals = row_values(_bridge_forward(lm, iv), sets)
        frames.append(score(vals, baseline=base, seed=cfg.seed).assign(condition=name))
    return pd.concat(frames, ignore_index=True).assign(variant=lm.info.name, k=cfg.disrupt_k)


def wavelength_table(traj: pd.DataFrame, cfg: TwinsConfig) -> pd.DataFrame:
    """For each RoPE variant at its last step, Q/K in the later half of the layers: the peak pair
    and its wavelength relative to the training context."""
    late = cfg.n_layers // 2
    t = traj[(traj.mechanism == "rope") & (traj.site != "v") & (traj.layer >= late)]
    t = t[t.step == t.groupby("variant").step.transform("max")]
    return t[["variant", "context", "rope_theta", "site", "layer", "max_ratio", "peak_pair",
              "peak_wavelength_over_context", "centroid_wavelength_over_context", "slow_half_share"]].reset_index(drop=True)


def summary_ratios(traj: pd.DataFrame, cfg: TwinsConfig) -> dict[str, dict[str, float]]:
    """Per twin: the largest per-head max/mean ratio of M over the later half of the layers at
    the final checkpoint, for q, k, v."""
    late = cfg.n_layers // 2
    out = {}
    for v in TWINS:
        t = traj[(traj.variant == v.name) & (traj.layer >= late)]
        t = t[t.step == t.step.max()]
        out[v.mechanism] = {s: round(float(t[t.site == s].max_ratio.max()), 4) for s in SITES}
    return out
